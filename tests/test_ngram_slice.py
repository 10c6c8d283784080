"""ngram_slice: Kneser-Ney on the embedding slice, one <|endoftext|>, then the training tokens."""

import json
import re
import runpy
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from newllm.baselines.ngram import KneserNeyLM, counted_stream, fit_and_score
from newllm.tokenizer import EOT_ID, VOCAB_SIZE

V = 12  # a tiny vocabulary; id V - 1 plays <|endoftext|>
SEP = V - 1


def _conversations(rng, count, vocab=V - 1, eot=SEP):
    """``count`` conversations of ids ``0..vocab-1`` joined by ``eot`` (as newllm.data.token_stream)."""
    parts = []
    for k in range(count):
        if k:
            parts.append([eot])
        parts.append(rng.integers(0, vocab, size=rng.integers(5, 30)))
    return np.concatenate(parts).astype(np.int64)


@pytest.fixture
def streams():
    rng = np.random.default_rng(0)
    return {name: _conversations(rng, n) for name, n in (("slice", 20), ("train", 12), ("dev", 4), ("test", 5))}


def test_the_counted_stream_is_slice_separator_train():
    train, piece = np.array([3, 4, 5]), np.array([1, 2])
    assert counted_stream(train, piece).tolist() == [1, 2, EOT_ID, 3, 4, 5]
    assert counted_stream(train, piece, separator=9).tolist() == [1, 2, 9, 3, 4, 5]
    for empty in (None, np.zeros(0, dtype=np.uint16)):
        assert counted_stream(train, empty).tolist() == [3, 4, 5]


@pytest.mark.parametrize("discount", ["modified", 0.75])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_slice_model_is_normalised_over_the_vocabulary(streams, order, discount):
    lm, summary, _, _ = fit_and_score(
        streams["train"], streams["dev"], streams["test"], order, discount, streams["slice"], vocab_size=V, separator=SEP
    )
    s = counted_stream(streams["train"], streams["slice"], SEP)
    joins = [i for i in range(3, s.size) if s[i - 1] == SEP]
    # seen histories, histories across the join, the start of a stream and an unseen one
    contexts = np.array([s[i - 3 : i] for i in joins[:3]] + [[-1, -1, s[0]], [-1, -1, -1], [10, 10, 10]])
    dist = lm.distribution(contexts)
    assert dist.shape == (contexts.shape[0], V) and (dist > 0).all()
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lm.prob(contexts, np.full(contexts.shape[0], 4)), dist[:, 4], rtol=1e-12)
    assert summary["test_tokens"] == streams["test"].size - 1


def test_slice_model_is_normalised_over_gpt2_ids(streams):
    # real ids: the separator is <|endoftext|> and the distribution covers all 50,257 ids
    shift = lambda x: np.where(x == SEP, EOT_ID, x * 1000 + 7)  # noqa: E731
    train, piece, dev, test = (shift(streams[k]) for k in ("train", "slice", "dev", "test"))
    lm, summary, _, _ = fit_and_score(train, dev, test, 3, "modified", piece)
    contexts = np.array([[piece[-1], EOT_ID], [EOT_ID, train[0]], [train[3], train[4]], [-1, 50000]])
    dist = lm.distribution(contexts)
    assert dist.shape == (4, VOCAB_SIZE) and (dist > 0).all()
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert summary["counted_tokens"] == piece.size + 1 + train.size


def test_unigram_counts_are_those_of_slice_separator_and_train(streams):
    # order 1, fixed D: p(w) = max(c(w) - D, 0)/N + D·T/(N·V) with c the raw counts of the
    # counted stream, N its length, T its number of types (Chen & Goodman 1998, eq. 16)
    D, train, piece = 0.5, streams["train"], streams["slice"]
    lm, summary, history, _ = fit_and_score(train, streams["dev"], streams["test"], 1, D, piece, vocab_size=V, separator=SEP)
    counts = np.bincount(piece, minlength=V) + np.bincount(train, minlength=V)
    counts[SEP] += 1  # the separator between the slice and the training tokens
    N, T = counts.sum(), np.count_nonzero(counts)
    np.testing.assert_allclose(lm.unigram, np.maximum(counts - D, 0) / N + D * T / (N * V), rtol=0, atol=1e-15)
    assert N == piece.size + 1 + train.size == summary["counted_tokens"] == summary["tokens_processed"]
    assert summary["slice_tokens"] == piece.size and summary["train_tokens"] == train.size - 1
    assert history[0]["tokens"] == N


def test_highest_order_counts_every_window_of_the_counted_stream_once(streams):
    # top order n, fixed D < 1: every seen n-gram keeps alpha > 0, so the stored n-grams are
    # the distinct windows of the counted stream, and each seen history's back-off weight is
    # D·types(h)/c(h): the counts c(h·) sum to the number of windows, N - n + 1
    n, D, train, piece = 3, 0.5, streams["train"], streams["slice"]
    lm, summary, _, _ = fit_and_score(train, streams["dev"], streams["test"], n, D, piece, vocab_size=V, separator=SEP)
    s = counted_stream(train, piece, SEP)
    windows = np.lib.stride_tricks.sliding_window_view(s, n)
    distinct = np.unique(windows, axis=0)
    assert summary["ngrams_per_order"][-1] == distinct.shape[0]
    histories, per_history = np.unique(windows[:, :-1], axis=0, return_counts=True)
    types = np.array([np.unique(distinct[(distinct[:, :-1] == h).all(axis=1), -1]).size for h in histories])
    level = lm.levels[-1]
    hist_ids = lm._history_ids(np.asarray(histories))[-1]
    np.testing.assert_allclose(level.gamma[hist_ids], D * types / per_history, rtol=1e-12)
    assert per_history.sum() == summary["counted_tokens"] - (n - 1)
    # the windows across the join pass through the separator
    assert windows[piece.size - 2].tolist() == [piece[-2], piece[-1], SEP]
    assert windows[piece.size - 1].tolist() == [piece[-1], SEP, train[0]]


@pytest.mark.parametrize("empty", [None, np.zeros(0, dtype=np.uint16)])
def test_an_empty_slice_gives_the_plain_ngram_model(streams, empty):
    args = (streams["train"], streams["dev"], streams["test"], 3, "modified")
    plain_lm, plain, _, plain_nll = fit_and_score(*args, vocab_size=V, separator=SEP)
    lm, summary, _, nll = fit_and_score(*args, slice_stream=empty, vocab_size=V, separator=SEP)
    reference = KneserNeyLM(3, "modified", V).fit(streams["train"])
    for model in (plain_lm, lm):
        np.testing.assert_array_equal(model.unigram, reference.unigram)
        for level, ref in zip(model.levels, reference.levels):
            np.testing.assert_array_equal(level.keys, ref.keys)
            np.testing.assert_array_equal(level.alpha, ref.alpha)
            np.testing.assert_array_equal(level.gamma, ref.gamma)
    np.testing.assert_array_equal(nll, plain_nll)
    timing = {"train_seconds", "dev_seconds", "test_seconds"}
    assert {k: v for k, v in summary.items() if k not in timing} == {k: v for k, v in plain.items() if k not in timing}
    assert summary["slice_tokens"] == 0 and summary["counted_tokens"] == streams["train"].size


def test_the_slice_changes_the_model(streams):
    args = (streams["train"], streams["dev"], streams["test"], 3, "modified")
    _, plain, _, _ = fit_and_score(*args, vocab_size=V, separator=SEP)
    _, with_slice, _, _ = fit_and_score(*args, slice_stream=streams["slice"], vocab_size=V, separator=SEP)
    assert with_slice["train_tokens"] == plain["train_tokens"]  # same x-axis
    assert with_slice["counted_tokens"] > plain["counted_tokens"] and with_slice["test_loss"] != plain["test_loss"]


def _script_inputs(tmp_path):
    from newllm.data import write_stream

    rng = np.random.default_rng(1)
    paths = {}
    for name, n in (("train", 6), ("dev", 3), ("test", 3), ("embedding_pool", 10)):
        stream = _conversations(rng, n, vocab=500, eot=EOT_ID).astype(np.uint16)
        paths[name] = tmp_path / f"{name}.npy"
        write_stream(paths[name], stream, {"split": name})
    return paths


@pytest.mark.parametrize("model", ["ngram", "ngram_slice"])
def test_rule_script_records_slice_and_counted_tokens(repo, tmp_path, model):
    from newllm.analysis import SUMMARY_COLUMNS
    from newllm.data import read_stream

    paths = _script_inputs(tmp_path)
    out = tmp_path / model / "lm"
    run = {"study": "t", "model": model, "variant": "base", "samples": 6, "context_dim": 0, "seed": 0}
    smk = SimpleNamespace(
        input=SimpleNamespace(**{k: str(v) for k, v in paths.items()}),
        output=SimpleNamespace(
            metrics=str(out / "metrics.json"), test_nll=str(out / "test_token_nll.npy"), history=str(out / "history.csv")
        ),
        params=SimpleNamespace(
            run={"run": run, "seed": 0, "device": "cpu"},
            baselines={"ngram": {"order": 3, "discount": "modified"}},
            slice=model == "ngram_slice",
        ),
        log=[str(tmp_path / f"{model}.log")],
        threads=1,
    )
    runpy.run_path(str(repo / "workflow_scripts" / "ngram.py"), init_globals={"snakemake": smk}, run_name="__main__")
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["summary"]
    train, piece = read_stream(paths["train"]), read_stream(paths["embedding_pool"])
    assert set(SUMMARY_COLUMNS) <= set(summary) and metrics["run"]["model"] == model
    assert summary["train_tokens"] == train.size - 1
    slice_tokens = piece.size if model == "ngram_slice" else 0
    assert summary["slice_tokens"] == slice_tokens
    assert summary["counted_tokens"] == (slice_tokens + 1 if slice_tokens else 0) + train.size
    nll = np.load(out / "test_token_nll.npy")
    assert nll.dtype == np.float32 and summary["test_loss"] == pytest.approx(float(nll.astype(np.float64).mean()), rel=1e-5)


@pytest.mark.slow  # a Snakemake dry run: 6 s alone, 25 s on a loaded 2-core machine
def test_dry_run_plans_both_count_models_with_the_slice_as_input(repo, tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("models: [cvfp, ngram, ngram_slice]\n")
    args = ["-n", "--cores", "1", "--configfile", "config/test.yaml", str(config), "--directory", str(tmp_path / "work")]
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    jobs = {}  # model -> input lists of its ngram jobs
    for block in re.split(r"\n(?=\[[^\]]+\]\n)", result.stdout + result.stderr):
        if re.search(r"^rule ngram:$", block, re.M):
            model = re.search(r"wildcards:.*\bmodel=(\w+)", block).group(1)
            jobs.setdefault(model, []).append(re.search(r"^\s+input: (.*)$", block, re.M).group(1).split(", "))
    sizes = 4  # config/test.yaml: 4 sample sizes x 1 seed
    assert sorted(jobs) == ["ngram", "ngram_slice"] and all(len(v) == sizes for v in jobs.values())
    pool = {"results/test/data/embedding_pool.npy", "results/test/data/embedding_pool.json"}
    assert all(pool <= set(inputs) for inputs in jobs["ngram_slice"])
