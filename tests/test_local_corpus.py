"""The worked example of a study on your own corpus: config/example_local.yaml on
tests/data/example_corpus.jsonl, a JSON-lines file of made-up conversations.

The corpus is written by :func:`example_corpus_lines` (``python tests/test_local_corpus.py``
rewrites it); a fast test checks the file is exactly that output, and a slow one runs the
example study up to its verdict.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "example_corpus.jsonl"
CONFIG = REPO / "config" / "example_local.yaml"
CONVERSATIONS = 150

TOPICS = {
    "the weather": (["rain", "sun", "wind", "snow", "fog"], ["an umbrella", "a warm coat", "sunglasses", "boots"]),
    "cooking": (["soup", "bread", "rice", "pasta", "salad"], ["a big pot", "fresh herbs", "a sharp knife", "an oven"]),
    "books": (["a novel", "a poem", "a short story", "a play"], ["a quiet room", "a good lamp", "a library card"]),
    "travel": (["the coast", "the hills", "a small town", "the city"], ["a map", "a train ticket", "a backpack"]),
    "gardening": (["tomatoes", "roses", "beans", "mint", "carrots"], ["a spade", "good soil", "a watering can"]),
    "music": (["the piano", "the guitar", "a song", "the drums"], ["an hour a day", "a teacher", "a metronome"]),
    "pets": (["a cat", "a dog", "a rabbit", "a parrot"], ["a soft bed", "daily walks", "fresh water"]),
    "sport": (["running", "swimming", "cycling", "tennis"], ["good shoes", "a rest day", "a friend to train with"]),
}
OPENERS = ["Hi!", "Hello there.", "Good morning.", "Hey, quick question.", "Hi, can you help me?"]
ASKS = [
    "What do you think about {thing}?",
    "I want to learn more about {thing}. Where do I start?",
    "Is {thing} hard for a beginner?",
    "Can you tell me something about {thing}?",
    "Why do people like {thing} so much?",
]
ANSWERS = [
    "{thing} is a fine place to start when you talk about {topic}.",
    "Many people enjoy {thing}; with {need} it gets much easier.",
    "Start small: {thing} needs patience, and {need} helps a lot.",
    "I would say {thing} is simple once you have {need}.",
    "People like {thing} because it makes {topic} feel calm and friendly.",
]
FOLLOW_UPS = [  # (question, its answer)
    ("Thanks! Do I really need {need}?", "Yes, {need} is worth it, but you can begin without it."),
    ("How long does it take to get good at it?", "A few weeks of practice is enough to feel at home with {thing}."),
    ("And what about {other}?", "{other} is also nice; try both and keep the one you enjoy."),
    ("That makes sense. Any last tip?", "Keep it fun, take notes, and ask again whenever you like."),
]
CLOSERS = ["Great, thank you.", "Thanks, that helps.", "Perfect, bye!", "Okay, I will try that."]


def example_conversation(rng: random.Random, number: int) -> dict:
    """One made-up conversation in UltraChat's schema: ``{"prompt_id", "messages": [{role, content}]}``."""
    topic = rng.choice(sorted(TOPICS))
    things, needs = TOPICS[topic]
    thing, other = rng.sample(things, 2)
    words = {"topic": topic, "thing": thing, "other": other, "need": rng.choice(needs)}
    turns = [f"{rng.choice(OPENERS)} {rng.choice(ASKS).format(**words)}", rng.choice(ANSWERS).format(**words)]
    for question, answer in rng.sample(FOLLOW_UPS, rng.randint(0, 2)):
        turns += [question.format(**words), answer.format(**words)]
    turns.append(rng.choice(CLOSERS))
    turns = [turn[0].upper() + turn[1:] for turn in turns]
    roles = ["user", "assistant"] * len(turns)
    return {
        "prompt_id": f"example-{number:03d}",
        "messages": [{"role": role, "content": text} for role, text in zip(roles, turns)],
    }


def example_corpus_lines(count: int = CONVERSATIONS, seed: int = 0) -> list[str]:
    """``count`` distinct made-up conversations, one JSON object per line (seeded)."""
    rng = random.Random(seed)
    lines, seen, number = [], set(), 0
    while len(lines) < count:
        row = example_conversation(rng, number)
        text = "\n".join(m["content"] for m in row["messages"])
        if text in seen:
            continue
        seen.add(text)
        lines.append(json.dumps(row))
        number += 1
    return lines


def test_the_example_corpus_is_the_generators_output():
    assert CORPUS.read_text().splitlines() == example_corpus_lines()
    assert CORPUS.stat().st_size < 200_000


def test_the_example_config_points_at_the_example_corpus():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["study"] == "example_local"
    assert config["corpus"]["source"] == "local" and REPO / config["corpus"]["path"] == CORPUS
    validation = config["validation"]
    needed = validation["dev_samples"] + validation["test_samples"] + validation["embedding_samples"]
    assert needed + max(config["sample_sizes"]) <= CONVERSATIONS


@pytest.mark.slow
def test_the_example_study_runs_to_its_verdict(tmp_path):
    """The README's own-corpus example, end to end, in a fresh working directory."""
    work = tmp_path / "work"
    (work / CORPUS.relative_to(REPO)).parent.mkdir(parents=True)
    (work / CORPUS.relative_to(REPO)).write_bytes(CORPUS.read_bytes())  # corpus.path is relative to the working directory
    args = ["--cores", "2", "--configfile", str(CONFIG), "--directory", str(work)]
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    verdict = work / "results" / "example_local" / "tables" / "verdict.md"
    assert verdict.is_file() and verdict.read_text().strip()


if __name__ == "__main__":
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    CORPUS.write_text("".join(line + "\n" for line in example_corpus_lines()))
    print(f"wrote {CORPUS} ({CORPUS.stat().st_size} bytes)")
