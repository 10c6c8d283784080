import json

import numpy as np
import pytest

from newllm.data import (
    DataError,
    build_corpus_cache,
    chitchat_json_path,
    chitchat_to_rows,
    load_corpus_cache,
    load_corpus_dataset,
    read_stream,
    sample_ends,
    split_samples,
    target_conversations,
    token_stream,
    validation_coverage,
    write_stream,
)
from newllm.tokenizer import EOT_ID, install_tokenizer_files, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    install_tokenizer_files("packaged", folder)
    return load_tokenizer(folder)


@pytest.fixture()
def local_jsonl(tmp_path):
    rows = [
        {"prompt_id": "a", "messages": [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Hi!"}]},
        {"prompt_id": "b", "messages": [{"role": "user", "content": "How are you?"}]},
        {"prompt_id": "c", "messages": [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Hi!"}]},
        {"prompt_id": "d", "messages": [{"role": "user", "content": "   "}]},
        {"prompt_id": "e", "messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_files_through_datasets_dedup_and_manifest(local_jsonl, tokenizer, tmp_path):
    # the same datasets.load_dataset path the hub source uses, on small local data
    dataset = load_corpus_dataset({"source": "local", "path": str(local_jsonl), "split": "train"}, tmp_path / "stage")
    manifest = build_corpus_cache(dataset, tokenizer, tmp_path / "cache")
    assert manifest["sample_ids"] == ["a", "b", "e"]
    assert manifest["dropped_duplicates"] == 1 and manifest["dropped_empty"] == 1
    tokens, offsets, _ = load_corpus_cache(tmp_path / "cache")
    first = tokens[offsets[0] : offsets[1]].tolist()
    assert first == tokenizer("Hello world\nHi!")["input_ids"]  # messages joined with "\n"
    assert tokens.dtype == np.uint16 and manifest["num_tokens"] == int(offsets[-1])


def test_corrupted_cache_is_detected(local_jsonl, tokenizer, tmp_path):
    dataset = load_corpus_dataset({"source": "local", "path": str(local_jsonl)}, tmp_path / "stage")
    build_corpus_cache(dataset, tokenizer, tmp_path / "cache")
    arr = np.load(tmp_path / "cache" / "tokens.npy")
    arr[0] += 1
    np.save(tmp_path / "cache" / "tokens.npy", arr)
    with pytest.raises(DataError, match="tokens.npy has SHA-256 .* corrupted or edited"):
        load_corpus_cache(tmp_path / "cache")


def test_a_cache_from_other_corpus_settings_is_refused(local_jsonl, tokenizer, tmp_path):
    corpus = {"source": "local", "path": str(local_jsonl), "max_samples": 3}
    dataset = load_corpus_dataset(corpus, tmp_path / "stage")
    build_corpus_cache(dataset, tokenizer, tmp_path / "cache", max_samples=3, extra_manifest={"corpus": corpus})
    assert load_corpus_cache(tmp_path / "cache", corpus=dict(corpus))[2]["corpus"] == corpus
    with pytest.raises(DataError, match=r"max_samples: 3 in the cache, 2 in the config.*--forcerun cache_corpus"):
        load_corpus_cache(tmp_path / "cache", corpus={**corpus, "max_samples": 2})
    with pytest.raises(DataError, match=r"split: None in the cache, 'train' in the config"):
        load_corpus_cache(tmp_path / "cache", corpus={**corpus, "split": "train"})


def test_missing_local_corpus_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        load_corpus_dataset({"source": "local", "path": str(tmp_path / "nope.jsonl")}, tmp_path)


def test_chitchat_rows_have_ultrachat_schema():
    rows = chitchat_to_rows(chitchat_json_path())
    assert len(rows) == 7168
    first = rows[0]
    assert set(first) == {"prompt_id", "messages"}
    assert first["messages"][0] == {"role": "user", "content": "Hello"}
    assert {m["role"] for r in rows[:50] for m in r["messages"]} == {"user", "assistant"}


def test_split_is_disjoint_nested_and_seeded():
    sizes = {"dev": 30, "test": 50, "embedding": 100}
    parts = split_samples(1000, sizes, seed=7)
    assert {k: len(v) for k, v in parts.items()} == {"dev": 30, "test": 50, "embedding": 100, "pool": 820}
    names = list(parts)
    for i, a in enumerate(names):  # dev, test, embedding slice and pool pairwise disjoint
        for b in names[i + 1 :]:
            assert set(parts[a]).isdisjoint(parts[b]), (a, b)
    assert len(set().union(*map(set, parts.values()))) == 1000
    again = split_samples(1000, sizes, seed=7)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_samples(1000, sizes, seed=8)
    assert not np.array_equal(parts["test"], other["test"])  # the split seed moves it
    pool = parts["pool"]
    # nested sizes: the training set of size N is the prefix of the pool, for every N
    for small, large in [(50, 100), (100, 400), (400, 820)]:
        assert set(pool[:small]) <= set(pool[:large])
    with pytest.raises(DataError, match="leave none for training"):
        split_samples(180, sizes, seed=0)
    with pytest.raises(DataError, match="test split size 0 must be >= 1"):
        split_samples(1000, {**sizes, "test": 0}, seed=0)


def test_sample_ends_and_target_conversations():
    # samples of 2, 1 and 3 tokens joined by EOT: [a a E b E c c c]
    ends = sample_ends([2, 1, 3])
    assert ends == [2, 4, 8]  # exclusive ends of each sample's own tokens; EOTs at 2 and 4
    # targets t = 0..6 predict positions 1..7: positions 1, 2 (the EOT) -> sample 0, 3, 4 -> 1, 5..7 -> 2
    assert target_conversations(ends, 8).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_token_stream_separates_samples_with_eot(tmp_path):
    tokens = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint16)
    offsets = np.array([0, 2, 3, 6])
    stream = token_stream(tokens, offsets, [2, 0])
    assert stream.tolist() == [4, 5, 6, EOT_ID, 1, 2]
    write_stream(tmp_path / "s.npy", stream, {"split": "x"})
    assert read_stream(tmp_path / "s.npy").tolist() == stream.tolist()


def test_validation_coverage_counts():
    train = np.array([1, 2, 3, 3])
    val = np.array([1, 4, 4, 5, 2])
    cov = validation_coverage(train, val)
    assert cov == {"validation_tokens": 5, "unseen_tokens": 3, "unseen_fraction": 0.6, "unseen_types": 2}


def test_split_is_the_seeded_permutation_cut_in_order_and_minimum_sizes_are_allowed():
    order = np.random.default_rng(3).permutation(20)
    parts = split_samples(20, {"dev": 1, "test": 2}, seed=3)  # no embedding slice: size 0
    assert parts["dev"].tolist() == order[:1].tolist() and parts["test"].tolist() == order[1:3].tolist()
    assert parts["embedding"].tolist() == [] and parts["pool"].tolist() == order[3:].tolist()
    assert all(v.dtype == np.int64 for v in parts.values())
    with_slice = split_samples(20, {"dev": 1, "test": 2, "embedding": 4}, seed=3)
    assert with_slice["embedding"].tolist() == order[3:7].tolist() and with_slice["pool"].tolist() == order[7:].tolist()
    assert split_samples(4, {"dev": 1, "test": 2, "embedding": 0}, seed=3)["pool"].size == 1  # one sample left suffices
    with pytest.raises(DataError, match="dev split size 0 must be >= 1"):
        split_samples(20, {"dev": 0, "test": 2}, seed=3)
    with pytest.raises(DataError, match="embedding split size -1"):
        split_samples(20, {"dev": 1, "test": 2, "embedding": -1}, seed=3)
