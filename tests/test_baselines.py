"""Baselines: Kneser-Ney n-gram, LSTM and Transformer LMs, parameter matching."""

import math

import numpy as np
import pytest
import torch

from newllm.analysis import SUMMARY_COLUMNS
from newllm.baselines.models import (
    LSTMLM,
    TransformerConfig,
    TransformerLM,
    cvfp_parameter_target,
    match_lstm,
    match_transformer,
)
from newllm.baselines.ngram import KneserNeyLM, modified_kn_discounts
from newllm.baselines.training import BPTTBatches, NeuralTrainConfig, evaluate_stream, train_neural_lm
from newllm.flops import train_flops
from newllm.model import count_parameters
from newllm.tokenizer import VOCAB_SIZE

# ------------------------------------------------------------------ Kneser-Ney by hand

# Toy corpus over V = 4 ids, one fixed discount D = 0.5 (Chen & Goodman 1998, eq. 16-17):
#   stream 0 1 0 2 0 1
#   bigrams (raw counts, top order of the bigram model): (0,1)x2 (1,0)x1 (0,2)x1 (2,0)x1
#   unigram continuation counts N1+(• w): w=0 after {1, 2} -> 2; w=1 after {0} -> 1;
#   w=2 after {0} -> 1; w=3 never -> 0.  S = 4 over 3 types: gamma_1 = 3 * 0.5 / 4 = 3/8
#   p1(0) = (2 - 0.5)/4 + 3/8 * 1/4 = 0.375 + 0.09375 = 0.46875
#   p1(1) = p1(2) = (1 - 0.5)/4 + 3/32 = 0.21875;   p1(3) = 3/32 = 0.09375   (sum 1)
TOY = np.array([0, 1, 0, 2, 0, 1])
P1 = {0: 0.46875, 1: 0.21875, 2: 0.21875, 3: 0.09375}


def test_kn_unigram_and_bigram_match_hand_computation():
    lm = KneserNeyLM(order=2, discount=0.5, vocab_size=4).fit(TOY)
    np.testing.assert_allclose(lm.unigram, [P1[w] for w in range(4)], rtol=0, atol=1e-12)
    # history 0: c(0,1)=2, c(0,2)=1 -> S = 3, two types -> gamma(0) = 2 * 0.5 / 3 = 1/3
    expected_after_0 = {
        1: (2 - 0.5) / 3 + P1[1] / 3,  # 0.5 + 0.0729166… = 0.5729166…
        2: (1 - 0.5) / 3 + P1[2] / 3,  # 0.1666… + 0.0729166… = 0.2395833…
        0: P1[0] / 3,  # 0.15625: unseen after 0, back-off only
        3: P1[3] / 3,  # 0.03125
    }
    got = lm.prob(np.zeros((4, 1), dtype=np.int64), np.array(list(expected_after_0)))
    np.testing.assert_allclose(got, list(expected_after_0.values()), rtol=0, atol=1e-12)
    assert sum(expected_after_0.values()) == pytest.approx(1.0, abs=1e-12)
    # history 3 was never seen: p(w | 3) = p1(w); history 1: c(1,0)=1 -> 0.5 + 0.5 * p1(w)
    np.testing.assert_allclose(lm.prob(np.full((4, 1), 3), np.arange(4)), [P1[w] for w in range(4)], atol=1e-12)
    np.testing.assert_allclose(lm.prob(np.ones((1, 1), dtype=np.int64), [0]), [0.5 + 0.5 * P1[0]], atol=1e-12)
    # scoring the stream itself: target t+1 given token t
    nll, correct = lm.score_stream(TOY)
    expected = [expected_after_0[1], 0.5 + 0.5 * P1[0], expected_after_0[2], 0.5 + 0.5 * P1[0], expected_after_0[1]]
    np.testing.assert_allclose(nll, -np.log(expected), atol=1e-12)
    assert correct.tolist() == [True, True, False, True, True]  # argmax after 0 is 1, after 1 and 2 it is 0


def test_kn_trigram_uses_continuation_counts_at_lower_orders():
    lm = KneserNeyLM(order=3, discount=0.5, vocab_size=4).fit(TOY)
    # trigrams (raw): (0,1,0) (1,0,2) (0,2,0) (2,0,1), one each -> every seen history has S = 1, gamma = 0.5
    # bigram level now holds continuation counts N1+(• v w): (0,1) only after 2 (its first
    # occurrence starts the stream) -> 1; (1,0), (0,2), (2,0) -> 1 each.
    #   history 0: (0,1)=1, (0,2)=1 -> S = 2, gamma = 2*0.5/2 = 0.5
    p2_1_after_0 = (1 - 0.5) / 2 + 0.5 * P1[1]  # 0.25 + 0.109375 = 0.359375
    p2_2_after_0 = (1 - 0.5) / 2 + 0.5 * P1[2]  # 0.359375
    p2_0_after_1 = (1 - 0.5) / 1 + 0.5 * P1[0]  # 0.5 + 0.234375 = 0.734375
    # unigram continuation counts are those of the distinct bigrams' suffixes: unchanged
    np.testing.assert_allclose(lm.unigram, [P1[w] for w in range(4)], atol=1e-12)
    cases = [
        ((0, 1), 0, 0.5 + 0.5 * p2_0_after_1),  # 0.8671875
        ((2, 0), 1, 0.5 + 0.5 * p2_1_after_0),  # 0.6796875
        ((3, 0), 2, p2_2_after_0),  # history (3,0) unseen -> the bigram level alone
        ((-1, 0), 1, p2_1_after_0),  # start of a stream: only one token of history
        ((-1, -1), 3, P1[3]),  # no history at all: the unigram level
    ]
    got = lm.prob(np.array([c for c, _, _ in cases]), np.array([w for _, w, _ in cases]))
    np.testing.assert_allclose(got, [p for _, _, p in cases], atol=1e-12)
    assert cases[0][2] == pytest.approx(0.8671875) and cases[1][2] == pytest.approx(0.6796875)


def test_modified_discounts_from_counts_of_counts():
    # n1 = 4, n2 = 2, n3 = 1, n4 = 1: Y = 4/(4+2*2) = 0.5
    # D1 = 1 - 2*0.5*2/4 = 0.5;  D2 = 2 - 3*0.5*1/2 = 1.25;  D3+ = 3 - 4*0.5*1/1 = 1.0
    counts = np.array([1, 1, 1, 1, 2, 2, 3, 4, 0, 7])
    assert modified_kn_discounts(counts) == pytest.approx((0.5, 1.25, 1.0))
    # no count of 3 or 4: one discount Y = n1/(n1 + 2 n2) = 2/(2+2) = 0.5
    assert modified_kn_discounts(np.array([1, 1, 2])) == pytest.approx((0.5, 0.5, 0.5))


def _zipf_stream(n, seed, vocab=VOCAB_SIZE):
    rng = np.random.default_rng(seed)
    return np.minimum(rng.zipf(1.3, size=n), vocab) - 1


@pytest.mark.parametrize("order,discount", [(1, "modified"), (2, 0.75), (3, "modified"), (3, 0.75), (4, "modified")])
def test_kn_distributions_sum_to_one_over_the_full_vocabulary(order, discount):
    train = _zipf_stream(20_000, 0)
    lm = KneserNeyLM(order=order, discount=discount).fit(train)
    unseen_id = int(np.setdiff1d(np.arange(VOCAB_SIZE), train)[0])
    contexts = np.array(
        [
            train[100:103],  # seen trigram history
            [train[5], train[6], unseen_id],  # last token never seen
            [unseen_id, train[0], train[1]],  # seen bigram, unseen trigram history
            [-1, -1, train[-1]],  # start of a stream; the last training token (maybe never followed)
            [-1, -1, -1],  # nothing
            [VOCAB_SIZE - 1, 0, 1],
        ]
    )
    dist = lm.distribution(contexts)
    assert dist.shape == (len(contexts), VOCAB_SIZE)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert (dist > 0).all()
    targets = np.array([train[103], 7, unseen_id, 0, 1, 2])
    np.testing.assert_allclose(lm.prob(contexts, targets), dist[np.arange(len(contexts)), targets], rtol=1e-10)
    assert (lm.argmax(contexts) == dist.argmax(axis=1)).all()


def test_kn_scores_a_stream_fast_and_consistently():
    train, test = _zipf_stream(100_000, 1), _zipf_stream(20_000, 2)
    lm = KneserNeyLM(order=3).fit(train)
    nll, correct = lm.score_stream(test)
    assert nll.shape == correct.shape == (test.size - 1,)
    ctx = lm.stream_contexts(test)
    np.testing.assert_allclose(nll[:50], -np.log(lm.distribution(ctx[:50])[np.arange(50), test[1:51]]), rtol=1e-10)
    assert 0 < nll.mean() < math.log(VOCAB_SIZE)


def test_kn_rejects_bad_input():
    with pytest.raises(ValueError, match="order"):
        KneserNeyLM(order=0)
    with pytest.raises(ValueError, match="discount"):
        KneserNeyLM(discount=1.5)
    with pytest.raises(ValueError, match="id 9"):
        KneserNeyLM(vocab_size=4).fit(np.array([0, 1, 9]))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        KneserNeyLM().fit(np.array([3]))
    with pytest.raises(RuntimeError, match="not fitted"):
        KneserNeyLM().prob(np.zeros((1, 2), dtype=np.int64), [0])


# ------------------------------------------------------------------ parameter matching


def _model_cfg(context_dim):
    return {"context_dim": context_dim, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"}


@pytest.mark.parametrize("context_dim,embed_dim", [(64, 64), (128, 64), (768, 768)])
def test_parameter_matching_within_ten_percent(context_dim, embed_dim):
    target = cvfp_parameter_target(_model_cfg(context_dim), embed_dim)
    if (context_dim, embed_dim) == (768, 768):
        assert target == 2 * 1_181_952  # docs/method.md §3: a 1-layer 768-d ContextBlock has ≈ 1.18M
    embeddings = torch.zeros(50, embed_dim)
    lstm = match_lstm(target, embed_dim)
    assert abs(lstm.relative_gap) <= 0.1
    assert count_parameters(LSTMLM(embeddings, lstm.size)) == lstm.parameters
    tf = match_transformer(target, embed_dim, num_layers=2, num_heads=2, block_size=64)
    assert abs(tf.relative_gap) <= 0.1 and tf.size % 2 == 0
    transformer = TransformerLM(embeddings, TransformerConfig(tf.size, num_layers=2, num_heads=2, block_size=64))
    assert count_parameters(transformer) == tf.parameters


@pytest.mark.parametrize("width", [16, 24])  # 16 == d_e: no input projection
def test_transformer_parameter_formula(width):
    model = TransformerLM(torch.zeros(10, 16), TransformerConfig(width, num_layers=1, num_heads=4, block_size=8))
    assert count_parameters(model) == TransformerLM.parameter_count(16, width, 1, 8)


def test_parameter_matching_refuses_an_impossible_tolerance():
    with pytest.raises(ValueError, match="within"):
        match_transformer(100, 64, num_layers=2, num_heads=2, block_size=64)


def test_train_flops_formula():
    # 6 per trained parameter and token (Kaplan et al. 2020); the frozen head's forward and
    # input gradient, 2 + 2 per head weight and token (no weight gradient)
    assert train_flops(1000, 10, VOCAB_SIZE, embed_dim=64) == 6 * 1000 * 10 + 4 * VOCAB_SIZE * 64 * 10


# ------------------------------------------------------------------ neural training

V_TOY, D_TOY = 40, 16


def _markov_stream(n, seed):
    """next = 7·prev + {0, 1} (mod V): two equally likely successors, loss floor ln 2."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    steps = rng.integers(0, 2, size=n)
    for i in range(1, n):
        out[i] = (7 * out[i - 1] + steps[i]) % V_TOY
    return torch.from_numpy(out)


@pytest.fixture(scope="module")
def toy_data():
    embeddings = torch.randn(V_TOY, D_TOY, generator=torch.Generator().manual_seed(0))
    embeddings = embeddings / embeddings.norm(dim=1, keepdim=True)  # unit rows, as the pipeline's row_norm 1
    return embeddings, _markov_stream(3000, 1), _markov_stream(600, 2), _markov_stream(600, 3)


CFG = NeuralTrainConfig(
    learning_rate=1e-2,
    batch_size=4,
    seq_len=16,
    eval_every=10,
    patience=2,
    min_delta=0.0,
    min_steps=20,
    max_steps=1500,
    chunk_tokens=64,
)


def _build(kind, embeddings, seed):
    torch.manual_seed(seed)
    if kind == "lstm":
        return LSTMLM(embeddings, 24)
    return TransformerLM(embeddings, TransformerConfig(24, num_layers=1, num_heads=2, block_size=16))


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_training_lowers_dev_loss_and_stops_early(kind, toy_data):
    embeddings, train, dev, test = toy_data
    model = _build(kind, embeddings, 0)
    assert evaluate_stream(model, dev, CFG.chunk_tokens)["loss"] > math.log(V_TOY) - 0.5  # about uniform at init
    result = train_neural_lm(model, train, dev, CFG, seed=0, stateful=kind == "lstm")
    history, summary = result.history, result.summary
    assert [r["step"] for r in history] == list(range(CFG.eval_every, summary["steps"] + 1, CFG.eval_every))
    assert summary["dev_loss"] < math.log(2) + 0.6  # most of the way from ln 40 = 3.7 to the floor ln 2
    assert summary["stopped_by"] == "early_stopping" and not summary["undertrained"]
    assert summary["steps"] < CFG.max_steps
    assert summary["dev_loss"] == min(r["dev_loss"] for r in history)
    # annealing on plateau: an evaluation without improvement halves the learning rate
    best = math.inf
    for before, after in zip(history, history[1:]):
        improved = before["dev_loss"] < best
        best = min(best, before["dev_loss"])
        assert after["learning_rate"] == pytest.approx(before["learning_rate"] * (1.0 if improved else CFG.lr_decay))
    # the best weights are restored: re-evaluating dev gives the best dev loss
    assert evaluate_stream(model, dev, CFG.chunk_tokens)["loss"] == pytest.approx(summary["dev_loss"], rel=1e-5)
    result = evaluate_stream(model, test, CFG.chunk_tokens)
    assert result["token_nll"].shape == (test.shape[0] - 1,) and result["token_nll"].dtype == np.float32
    assert float(result["token_nll"].astype(np.float64).mean()) == pytest.approx(result["loss"], rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_training_is_deterministic_per_seed(kind, toy_data):
    embeddings, train, dev, test = toy_data
    cfg = NeuralTrainConfig(**{**CFG.__dict__, "max_steps": 40, "min_steps": 40})
    runs = []
    for seed in (0, 0, 1):
        model = _build(kind, embeddings, seed)
        history = train_neural_lm(model, train, dev, cfg, seed=seed, stateful=kind == "lstm").history
        runs.append(([r["dev_loss"] for r in history], evaluate_stream(model, test, cfg.chunk_tokens)["token_nll"]))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_transformer_is_causal_and_scores_every_target_once(toy_data):
    embeddings, _, _, test = toy_data
    model = _build("transformer", embeddings, 0).eval()
    tokens = test[None, :16].clone()
    changed = tokens.clone()
    changed[0, 9:] = (changed[0, 9:] + 5) % V_TOY
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(changed)
    torch.testing.assert_close(a[0, :9], b[0, :9])
    assert not torch.allclose(a[0, 9:], b[0, 9:])
    # sliding window (block 16, stride 8): the first window is scored as is; every later
    # target sees 8..15 tokens of context, and position 20 is scored by window [8, 24)
    stream = test[:101]
    hidden = model.stream_hidden(stream)
    assert hidden.shape == (100, D_TOY)
    with torch.no_grad():
        first, _ = model(stream[None, :16])
        window, _ = model(stream[None, 8:24])
    torch.testing.assert_close(hidden[:16], first[0])
    torch.testing.assert_close(hidden[20], window[0, 12])


def test_lstm_stream_pass_equals_carried_windows(toy_data):
    embeddings, _, _, test = toy_data
    model = _build("lstm", embeddings, 0).eval()
    stream = test[:65]
    full = model.stream_hidden(stream)
    state, parts = None, []
    with torch.no_grad():
        for s in range(0, 64, 16):
            h, state = model(stream[None, s : s + 16], state)
            parts.append(h[0])
    torch.testing.assert_close(full, torch.cat(parts))


def test_bptt_lanes_shrink_for_short_streams_and_windows_continue(toy_data):
    embeddings, _, dev, _ = toy_data
    with pytest.raises(ValueError, match="too short"):
        train_neural_lm(_build("lstm", embeddings, 0), dev[:20], dev, CFG, seed=0, stateful=True)
    stream = torch.arange(1000)
    batches = BPTTBatches(stream[:50], batch_size=4, seq_len=16, generator=torch.Generator().manual_seed(0))
    assert batches.batch_size == 2  # (50 - 16) // 16 lanes of >= 16 tokens
    batches = BPTTBatches(stream, batch_size=4, seq_len=16, generator=torch.Generator().manual_seed(0))
    x1, y1, reset1 = batches.next()
    x2, _, reset2 = batches.next()
    assert reset1 and not reset2 and x1.shape == (4, 16)
    assert torch.equal(y1, x1 + 1) and torch.equal(x2[:, 0], x1[:, -1] + 1)  # each lane continues where it stopped


# ------------------------------------------------------------------ the rule scripts

SUMMARY_KEYS = set(SUMMARY_COLUMNS)  # the team contract every run's metrics.json carries (run_rows reads it)


def _schema_defaults(node):
    return {
        key: _schema_defaults(spec) if "properties" in spec else spec.get("default") for key, spec in node["properties"].items()
    }


@pytest.fixture
def rule_inputs(tmp_path):
    from newllm.data import write_stream
    from newllm.runtime import save_weights

    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", 900), ("dev", 200), ("test", 150)):
        stream = (rng.zipf(1.5, size=n) % VOCAB_SIZE).astype(np.uint16)
        paths[split] = tmp_path / f"{split}.npy"
        write_stream(paths[split], stream, {"sample_ids": ["a", "b"], "sample_end": [n // 2, n]})
    embeddings = torch.randn(VOCAB_SIZE, 16, generator=torch.Generator().manual_seed(0))
    paths["embeddings"] = tmp_path / "emb.safetensors"
    save_weights(paths["embeddings"], {"embeddings": embeddings / embeddings.norm(dim=1, keepdim=True)})
    return paths


def _run_script(repo, tmp_path, paths, model, baselines):
    import json
    import runpy
    from types import SimpleNamespace

    out = tmp_path / model / "lm"
    smk = SimpleNamespace(
        input=SimpleNamespace(**{k: str(v) for k, v in paths.items()}),
        output=SimpleNamespace(
            metrics=str(out / "metrics.json"), test_nll=str(out / "test_token_nll.npy"), history=str(out / "history.csv")
        ),
        params=SimpleNamespace(
            run={
                "model": {"context_dim": 16, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
                "phase1": {},
                "phase2": {},
                "run": {"study": "t", "model": model, "variant": "base", "samples": 2, "context_dim": 16, "seed": 0},
                "seed": 0,
                "device": "cpu",
            },
            baselines=baselines,
        ),
        log=[str(tmp_path / f"{model}.log")],
        threads=1,
    )
    script = "ngram.py" if model == "ngram" else "train_baseline.py"
    runpy.run_path(str(repo / "workflow_scripts" / script), init_globals={"snakemake": smk}, run_name="__main__")
    return json.loads((out / "metrics.json").read_text()), np.load(out / "test_token_nll.npy"), out


@pytest.mark.parametrize("model", ["ngram", "lstm", "transformer"])
def test_rule_scripts_write_the_run_contract(repo, tmp_path, rule_inputs, model):
    import yaml

    schema = yaml.safe_load((repo / "config" / "schema.yaml").read_text())
    baselines = _schema_defaults(schema["properties"]["baselines"])  # every key the scripts read has a default
    baselines["transformer"].update(num_layers=1, batch_size=2)  # 2 layers cannot match a 16-d cvfp run within 10 %
    baselines["lstm"].update(batch_size=4, bptt=16)
    baselines["early_stopping"] = {"eval_every": 5, "patience": 2, "min_steps": 5, "max_steps": 20}
    metrics, nll, out = _run_script(repo, tmp_path, rule_inputs, model, baselines)
    summary = metrics["summary"]
    assert SUMMARY_KEYS <= set(summary)
    assert metrics["run"]["model"] == model and (out / "history.csv").is_file()
    assert nll.dtype == np.float32 and nll.shape == (149,) and summary["test_tokens"] == 149
    assert summary["test_loss"] == pytest.approx(float(nll.astype(np.float64).mean()), rel=1e-5)
    assert summary["test_ppl"] == pytest.approx(math.exp(summary["test_loss"]), rel=1e-9)
    assert summary["train_tokens"] == 899
    if model == "ngram":
        assert summary["train_flops"] == 0 and summary["parameters"] > 0 and summary["stopped_by"] == "closed_form"
    else:
        assert abs(summary["parameters"] / 1120 - 1) <= 0.1  # cvfp ContextBlock + TokenBlock at d_c = d_e = 16
        assert summary["train_flops"] == train_flops(summary["parameters"], summary["tokens_processed"], VOCAB_SIZE, 16)
        assert summary["stopped_by"] in {"early_stopping", "max_steps"}
        assert summary["undertrained"] == (summary["stopped_by"] == "max_steps")


def test_a_diverging_run_names_the_step(toy_data):
    from newllm.training import TrainingDivergedError

    embeddings, train, dev, _ = toy_data
    model = _build("lstm", embeddings, 0)
    with torch.no_grad():
        model.readout[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"^lstm/test, step 1: non-finite loss nan"):
        train_neural_lm(model, train, dev, CFG, seed=0, stateful=True, run_name="lstm/test")


def test_kn_size_counts_stored_probabilities_and_back_off_weights_by_hand():
    # TOY bigram model, D = 0.5: unigrams with a discounted continuation count > 0 are 0, 1, 2
    # (3 never follows anything); 4 bigram types; back-off weights: the unigram level's
    # gamma = 3/8 and one per seen history 0, 1, 2 (history 3 was never seen)
    lm = KneserNeyLM(order=2, discount=0.5, vocab_size=4).fit(TOY)
    assert lm.num_ngrams() == [3, 4] and lm.effective_parameters() == 3 + 4 + 1 + 3
    unigram = KneserNeyLM(order=1, discount=0.5, vocab_size=4).fit(TOY)
    contexts = unigram.stream_contexts(TOY)
    assert contexts.shape == (5, 0) and contexts.dtype == np.int64  # no history at order 1
    assert unigram.num_ngrams() == [3] and unigram.effective_parameters() == 3 + 1


# ------------------------------------------------------------------ Kneser-Ney: more cases by hand


def test_modified_discounts_fall_back_to_one_clipped_discount():
    # n1 = n2 = 1, n3 = 2, n4 = 1: Y = 1/3, D(2) = 2 - 3·(1/3)·2/1 = 0 leaves (0, 2] -> Y three times
    assert modified_kn_discounts(np.array([1, 2, 3, 3, 4])) == pytest.approx((1 / 3,) * 3)
    # n1 = n2 = n3 = 1, n4 = 3: D(3+) = 3 - 4·(1/3)·3/1 = -1 -> Y
    assert modified_kn_discounts(np.array([1, 2, 3, 4, 4, 4])) == pytest.approx((1 / 3,) * 3)
    # n1 = n2 = n3 = n4 = 1: Y = 1/3, D = (1 - 2/3, 2 - 1, 3 - 4/3), all inside (0, r]
    assert modified_kn_discounts(np.array([1, 2, 3, 4])) == pytest.approx((1 / 3, 1.0, 5 / 3))
    assert modified_kn_discounts(np.array([1, 1, 3, 4])) == pytest.approx((0.9,) * 3)  # Y = 1 clipped to 0.9
    assert modified_kn_discounts(np.array([1] + [2] * 10)) == pytest.approx((0.1,) * 3)  # Y = 1/21 clipped to 0.1
    assert modified_kn_discounts(np.array([3, 4, 5, 0])) == (0.75, 0.75, 0.75)  # n1 = n2 = 0
    assert modified_kn_discounts(np.array([2, 2, 0])) == pytest.approx((0.1,) * 3)  # n1 = 0: Y = 0 clipped
    assert modified_kn_discounts(np.array([2, 3, 4])) == pytest.approx((0.1,) * 3)  # n1 = 0 (no D(1) = 1 - 2Y n2/0)
    assert modified_kn_discounts(np.array([1, 2, 4])) == pytest.approx((1 / 3,) * 3)  # n3 = 0
    assert modified_kn_discounts(np.array([1, 2, 3])) == pytest.approx((1 / 3,) * 3)  # n4 = 0
    assert modified_kn_discounts(np.array([1, 3])) == pytest.approx((0.9,) * 3)  # n1 + n2 = 1: Y = 1
    assert modified_kn_discounts(np.array([2, 3])) == pytest.approx((0.1,) * 3)  # n1 = 0, n2 = 1: Y = 0
    # n1 = 4, n2 = 2, n3 = 2, n4 = 1: Y = 0.5, D = (1 - 0.5, 2 - 3·0.5·2/2, 3 - 4·0.5·1/2)
    assert modified_kn_discounts(np.array([1, 1, 1, 1, 2, 2, 3, 3, 4])) == pytest.approx((0.5, 0.5, 2.0))


def test_kn_unigram_model_uses_one_discount_per_count_class():
    """Order 1 = raw counts.  Words 0-3 once, 4-5 twice, 6 three times, 7 four times over V = 10
    (N = 15, 8 types): modified discounts D = (0.5, 1.25, 1.0) (see above), gamma = (4·0.5 +
    2·1.25 + 1 + 1)/15, p(w) = (c - D(c))/15 + gamma/10."""
    stream = np.array([0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 7, 7, 7, 7])
    counts = np.bincount(stream, minlength=10)
    discount = np.select([counts >= 3, counts == 2, counts == 1], [1.0, 1.25, 0.5], 0.0)
    gamma = (4 * 0.5 + 2 * 1.25 + 1 + 1) / 15
    expected = (counts - discount) / 15 + gamma / 10
    lm = KneserNeyLM(order=1, vocab_size=10).fit(stream)
    assert lm.levels[0].discounts == pytest.approx((0.5, 1.25, 1.0))
    np.testing.assert_allclose(lm.unigram, expected, rtol=0, atol=1e-12)
    assert expected.sum() == pytest.approx(1.0, abs=1e-12)
    # order 1 ignores any context, of any width
    np.testing.assert_allclose(lm.prob(np.array([[5, 6], [0, 0]]), [7, 9]), expected[[7, 9]], atol=1e-12)
    # a fixed discount of 0.75 for every count: gamma = 8·0.75/15
    fixed = KneserNeyLM(order=1, discount=0.75, vocab_size=10).fit(stream)
    assert fixed.levels[0].discounts == (0.75, 0.75, 0.75)
    np.testing.assert_allclose(fixed.unigram, np.where(counts > 0, counts - 0.75, 0) / 15 + 8 * 0.75 / 15 / 10, atol=1e-12)


def test_kn_contexts_are_the_last_order_minus_1_tokens_left_padded():
    lm = KneserNeyLM(order=3, discount=0.5, vocab_size=4).fit(TOY)
    full = lm.prob(np.array([[0, 1]]), [0])
    # a 1-D context is one row; only the last 2 tokens of a longer one count
    np.testing.assert_allclose(lm.prob(np.array([0, 1]), [0]), full, atol=0)
    np.testing.assert_allclose(lm.prob(np.array([[3, 2, 0, 1]]), [0]), full, atol=0)
    # a one-token context is padded with "no token": the start of a stream
    np.testing.assert_allclose(lm.prob(np.array([[0]]), [1]), lm.prob(np.array([[-1, 0]]), [1]), atol=0)
    assert lm.stream_contexts(TOY).tolist() == [[-1, 0], [0, 1], [1, 0], [0, 2], [2, 0]]
    with pytest.raises(ValueError, match=r"context holds id -2; allowed: 0\.\.3 \(and -1 for 'no token'\)$"):
        lm.prob(np.array([[-2, 0]]), [0])
    with pytest.raises(ValueError, match="context holds id 4"):
        lm.prob(np.array([[4, 0]]), [0])
    with pytest.raises(ValueError, match="targets holds id 4"):
        lm.prob(np.array([[0, 0]]), [4])
    with pytest.raises(ValueError, match="training stream holds id 9"):
        KneserNeyLM(vocab_size=4).fit(np.array([0, 1, 9]))
    with pytest.raises(ValueError, match="scored stream holds id 7"):
        lm.score_stream(np.array([0, 7, 1]))
    with pytest.raises(ValueError, match="1-D array"):
        lm.score_stream(np.array([[0, 1, 2]]))
    # two rows of one token each are both padded
    np.testing.assert_allclose(lm.prob(np.array([[0], [1]]), [1, 0]), lm.prob(np.array([[-1, 0], [-1, 1]]), [1, 0]), atol=0)
    # targets as a column are the same [B] targets
    two = np.array([[0, 1], [1, 0]])
    np.testing.assert_allclose(lm.prob(two, np.array([[0], [2]])), lm.prob(two, [0, 2]), atol=0)
    with pytest.raises(ValueError, match="2 contexts but 1 targets"):
        lm.prob(np.array([[0, 0], [1, 0]]), [0])


def test_kn_scoring_in_chunks_of_one_history_matches_one_chunk():
    lm = KneserNeyLM(order=3, discount=0.5, vocab_size=4).fit(TOY)
    stream = np.array([0, 1, 0, 2, 0, 1, 3, 3, 0, 1, 0])
    nll, correct = lm.score_stream(stream)
    nll_1, correct_1 = lm.score_stream(stream, chunk=1)
    np.testing.assert_array_equal(nll, nll_1)
    np.testing.assert_array_equal(correct, correct_1)
    dist = lm.distribution(lm.stream_contexts(stream))
    np.testing.assert_allclose(nll, -np.log(dist[np.arange(10), stream[1:]]), atol=1e-12)
    np.testing.assert_array_equal(correct, dist.argmax(axis=1) == stream[1:])


def test_kn_smallest_vocabulary_and_stream_by_hand():
    """V = 2, stream 0 1, D = 0.5: bigram (0,1) once -> alpha = 0.5, gamma(0) = 0.5; unigram
    continuation counts (0, 1) -> p1 = (0.5 · 1/2, 0.5 + 0.5 · 1/2) = (0.25, 0.75)."""
    assert KneserNeyLM().order == 3  # the documented default
    with pytest.raises(ValueError, match="vocab_size"):
        KneserNeyLM(vocab_size=1)
    with pytest.raises(ValueError, match="discount"):
        KneserNeyLM(discount=0)
    lm = KneserNeyLM(order=2, discount=1, vocab_size=2).fit(np.array([0, 1]))  # D = 1 is allowed
    np.testing.assert_allclose(lm.unigram, [0.5, 0.5], atol=1e-12)  # all mass backed off: uniform
    lm = KneserNeyLM(order=2, discount=0.5, vocab_size=2).fit(np.array([0, 1]))
    np.testing.assert_allclose(lm.unigram, [0.25, 0.75], atol=1e-12)
    np.testing.assert_allclose(lm.prob(np.array([[0], [0], [1]]), [1, 0, 1]), [0.875, 0.125, 0.75], atol=1e-12)
    nll, correct = lm.score_stream(np.array([0, 1]))
    np.testing.assert_allclose(nll, [-np.log(0.875)], atol=1e-12)
    assert correct.tolist() == [True]


def test_kn_one_bigram_type_and_a_top_unigram_other_than_id_0():
    """Stream 2 2 2 over V = 4, D = 0.5: the single bigram (2,2) twice -> alpha = 1.5/2,
    gamma = 0.5/2; unigram continuation counts (0, 0, 1, 0) -> p1 = (1/8, 1/8, 5/8, 1/8)."""
    lm = KneserNeyLM(order=2, discount=0.5, vocab_size=4).fit(np.array([2, 2, 2]))
    np.testing.assert_allclose(lm.unigram, [0.125, 0.125, 0.625, 0.125], atol=1e-12)
    got = lm.prob(np.array([[2], [2], [0]]), [2, 0, 2])  # history 0 never seen: p1
    np.testing.assert_allclose(got, [0.75 + 0.25 * 0.625, 0.25 * 0.125, 0.625], atol=1e-12)
    assert lm.argmax(np.array([[0], [2], [-1]])).tolist() == [2, 2, 2]


def test_kn_trigram_histories_are_the_seen_bigrams():
    """Stream 0 1 0 1, D = 0.5: trigram histories (0,1) and (1,0), each followed once ->
    p(w | h) = 0.5·[w follows h] + 0.5 · p2(w | last token)."""
    lm = KneserNeyLM(order=3, discount=0.5, vocab_size=4).fit(np.array([0, 1, 0, 1]))
    contexts, targets = np.array([[0, 1], [1, 0], [0, 1]]), np.array([0, 1, 3])
    lower = lm.prob(np.array([[-1, 1], [-1, 0], [-1, 1]]), targets)
    np.testing.assert_allclose(lm.prob(contexts, targets), [0.5, 0.5, 0.0] + 0.5 * lower, atol=1e-12)


def test_kn_argmax_backs_off_when_the_support_is_spread_thin():
    """History 1 is followed by 10 different words once each (D = 0.9: 0.01 each), while 0
    follows 18 different tokens: p(0 | 1) = gamma · p1(0) beats every seen continuation."""
    stream = np.array([t for w in range(2, 12) for t in (1, w)] + [t for k in range(12, 30) for t in (k, 0)])
    lm = KneserNeyLM(order=2, discount=0.9, vocab_size=30).fit(stream)
    dist = lm.distribution(np.array([[1]]))
    assert dist[0].argmax() == 0 and lm.argmax(np.array([[1]])).tolist() == [0]


def test_kn_uint16_streams_as_stored_give_the_same_model():
    """Token streams are stored as uint16; ids times V overflow 16 bits if not widened."""
    train, test = _zipf_stream(3000, 5), _zipf_stream(500, 6)
    wide = KneserNeyLM(order=3).fit(train)
    narrow = KneserNeyLM(order=3).fit(train.astype(np.uint16))
    for a, b in zip(wide.levels, narrow.levels):
        np.testing.assert_array_equal(a.keys, b.keys)
        np.testing.assert_array_equal(a.alpha, b.alpha)
    nll, correct = wide.score_stream(test)
    nll16, correct16 = wide.score_stream(test.astype(np.uint16))
    np.testing.assert_array_equal(nll, nll16)
    np.testing.assert_array_equal(correct, correct16)
    contexts, targets = wide.stream_contexts(test)[1:51], test[2:52]  # full histories (no -1)
    np.testing.assert_array_equal(wide.prob(contexts.astype(np.uint16), targets), wide.prob(contexts, targets))


def test_no_token_is_a_valid_id_only_in_histories():
    """``NO_TOKEN`` (-1) pads a history before the stream's start; as a target, in a scored
    stream or in the training stream it is a bad id, refused with the input named (it was
    scored silently as id V-1 through negative indexing)."""
    from newllm.baselines.ngram import NO_TOKEN, KneserNeyLM

    lm = KneserNeyLM(order=2, discount=0.5, vocab_size=4).fit(np.array([0, 1, 0, 2, 0, 1]))
    assert lm.prob(np.array([[NO_TOKEN]]), [1])[0] == pytest.approx(lm.prob(np.array([[3]]), [1])[0])  # unseen history
    for call, what in [
        (lambda: lm.prob(np.array([[0]]), [NO_TOKEN]), "targets"),
        (lambda: lm.score_stream(np.array([0, NO_TOKEN, 1])), "scored stream"),
        (lambda: KneserNeyLM(order=2, vocab_size=4).fit(np.array([0, NO_TOKEN, 1, 2])), "training stream"),
    ]:
        with pytest.raises(ValueError, match=rf"{what} holds id -1; allowed: 0\.\.3$"):
            call()


# ------------------------------------------------------------------ neural models by hand


def test_embed_is_an_affine_free_layer_norm_of_the_rows():
    from newllm.baselines.models import embed

    emb = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 0.0]])
    out = embed(emb, torch.tensor([[1, 0, 1]]))
    # row 0: mean 3, variance (4 + 1 + 0 + 9)/4 = 3.5; row 1: mean 1, variance (1 + 1 + 9 + 1)/4 = 3
    row0 = (torch.tensor([1.0, 2.0, 3.0, 6.0]) - 3.0) / math.sqrt(3.5 + 1e-5)
    row1 = (torch.tensor([0.0, 0.0, 4.0, 0.0]) - 1.0) / math.sqrt(3.0 + 1e-5)
    assert out.shape == (1, 3, 4)
    torch.testing.assert_close(out[0], torch.stack([row1, row0, row1]))


def test_neural_baselines_reject_bad_sizes():
    emb = torch.zeros(10, 8)
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMLM(emb, 0)
    with pytest.raises(ValueError, match="embeddings"):
        LSTMLM(torch.zeros(2, 10, 8), 4)
    shape = {"width": 8, "num_layers": 2, "num_heads": 2, "block_size": 8}
    with pytest.raises(ValueError, match="embeddings"):
        TransformerLM(torch.zeros(10), TransformerConfig(**shape))
    for key in shape:
        with pytest.raises(ValueError, match=f"transformer {key} must be >= 1, got 0"):
            TransformerConfig(**(shape | {key: 0}))
    with pytest.raises(ValueError, match="transformer width 6 is not divisible by num_heads 4"):
        TransformerConfig(**(shape | {"width": 6, "num_heads": 4}))
    for stride in (-1, 9):
        with pytest.raises(ValueError, match=f"eval_stride must be in 1..block_size=8, got {stride}"):
            TransformerConfig(**shape, eval_stride=stride)
    # the stride may be the whole block (non-overlapping windows); none: half the block, at least 1
    assert TransformerLM(emb, TransformerConfig(**shape, eval_stride=8)).eval_stride == 8
    assert TransformerLM(emb, TransformerConfig(**shape)).eval_stride == 4
    assert TransformerLM(emb, TransformerConfig(**(shape | {"block_size": 1}))).eval_stride == 1
    shape = TransformerConfig(8, num_layers=2, num_heads=2, block_size=64)
    model = TransformerLM(emb, shape)
    assert model.config is shape
    assert (len(model.blocks), model.blocks[0].attn.num_heads, model.block_size, model.eval_stride) == (2, 2, 64, 32)
    assert model.drop.p == 0.0  # no dropout unless configured
    assert LSTMLM(emb, 1).hidden_size == 1  # the smallest LSTM
    model = TransformerLM(emb, TransformerConfig(8, num_layers=2, num_heads=2, block_size=4))
    assert model(torch.zeros(2, 4, dtype=torch.long))[0].shape == (2, 4, 8)  # a full block is fine
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_parameter_counts_by_hand_and_frozen_embeddings():
    # LSTM d_e = 2, H = 3: 4·3·(2 + 3) + 8·3 = 84, readout 3·2 + 2 + 2·2 = 12 -> 96
    assert LSTMLM.parameter_count(2, 3) == 96
    emb = torch.randn(5, 2, dtype=torch.float64)
    lstm = LSTMLM(emb, 3)
    assert count_parameters(lstm) == 96 and sum(p.numel() for p in lstm.parameters()) == 96
    assert "embeddings" not in lstm.state_dict()  # frozen and not saved: the pipeline's matrix
    assert lstm.embeddings.dtype == torch.float32 and torch.equal(lstm.embeddings, emb.float())
    # Transformer d_e = 4, W = 8, L = 1, block 3: input 4·8 + 8 = 40, positions 24,
    # block 12·64 + 13·8 = 872, readout 8·4 + 4 + 2·4 = 44 -> 980; W = d_e = 8: no input layer
    assert TransformerLM.parameter_count(4, 8, 1, 3) == 980
    assert TransformerLM.parameter_count(8, 8, 1, 3) == 24 + 872 + 8 * 8 + 24
    model = TransformerLM(torch.zeros(5, 4), TransformerConfig(8, num_layers=1, num_heads=2, block_size=3))
    assert count_parameters(model) == 980 and "embeddings" not in model.state_dict()
    same_width = TransformerConfig(8, num_layers=1, num_heads=2, block_size=4)
    assert isinstance(TransformerLM(torch.zeros(5, 8), same_width).input, torch.nn.Identity)


def test_transformer_init_is_nanogpt():
    torch.manual_seed(0)
    model = TransformerLM(torch.zeros(10, 32), TransformerConfig(64, num_layers=2, num_heads=2, block_size=64))
    stds = {name: float(p.detach().std()) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        if "ln" in name or name.startswith("readout.1"):  # LayerNorms keep weight 1, bias 0
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert torch.all(p == 0.0), name
        elif name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
            assert stds[name] == pytest.approx(0.02 / math.sqrt(4), rel=0.1), name
        else:  # input, qkv, MLP up, readout Linear and positions
            assert stds[name] == pytest.approx(0.02, rel=0.1), name
            assert abs(float(p.detach().mean())) < 0.002, name


def test_causal_self_attention_equals_the_softmax_formula():
    from newllm.baselines.models import CausalSelfAttention

    torch.manual_seed(0)
    attn = CausalSelfAttention(8, 2, 0.3).eval()  # evaluation: no attention dropout
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(8, dim=2)
        heads = []
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)  # head h: features 4h..4h+3
            scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4)
            scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), -math.inf)  # no look-ahead
            heads.append(scores.softmax(-1) @ v[..., sl])
        expected = torch.cat(heads, dim=2) @ attn.proj.weight.T + attn.proj.bias
        torch.testing.assert_close(attn(x), expected)
        attn.train()  # training: dropout on the attention weights
        torch.manual_seed(1)
        assert not torch.allclose(attn(x), expected)


def test_transformer_block_is_pre_layer_norm_with_a_4x_mlp():
    from newllm.baselines.models import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 0.0)
    assert block.mlp[0].out_features == 32 and block.mlp[2].in_features == 32
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        h = x + block.attn(block.ln1(x))
        torch.testing.assert_close(block(x), h + block.mlp(block.ln2(h)))


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_dropout_acts_in_training_only(kind):
    emb = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(1))

    def build(dropout):
        torch.manual_seed(0)
        if kind == "lstm":
            return LSTMLM(emb, 16, dropout=dropout)
        return TransformerLM(emb, TransformerConfig(16, num_layers=1, num_heads=2, block_size=8, dropout=dropout))

    plain, dropped = build(0.0).eval(), build(0.5).eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(tokens)[0], plain(tokens)[0])  # eval: no dropout at all
        dropped.train()
        torch.manual_seed(2)
        a = dropped(tokens)[0]
        torch.manual_seed(3)
        b = dropped(tokens)[0]
    assert not torch.allclose(a, b) and not torch.allclose(a, plain(tokens)[0])


@pytest.mark.parametrize("length,stride", [(31, 3), (30, 3), (31, 8), (6, 2)])
def test_transformer_stream_scores_each_target_with_the_first_window_that_reaches_it(length, stride):
    # windows of T = min(8, n - 1) tokens start every `stride` (and one ends at the stream's
    # end); target i is scored by the first window covering it: window 0 for i < T, else the
    # first start s with s + T > i
    emb = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = TransformerLM(emb, TransformerConfig(16, num_layers=1, num_heads=2, block_size=8, eval_stride=stride)).eval()
    stream = torch.randint(0, 20, (length,), generator=torch.Generator().manual_seed(1))
    M, T = length - 1, min(8, length - 1)
    hidden = model.stream_hidden(stream)
    assert hidden.shape == (M, 8)
    starts = sorted(set(range(0, M - T + 1, stride)) | {M - T})
    with torch.no_grad():
        for i in range(M):
            s = 0 if i < T else next(s for s in starts if s + T > i)
            window, _ = model(stream[None, s : s + T])
            torch.testing.assert_close(hidden[i], window[0, i - s])
    torch.testing.assert_close(model.stream_hidden(stream, windows_per_batch=1), hidden)


def test_size_matching_is_the_closest_size_by_brute_force():
    from newllm.baselines.models import SizeMatch, _closest

    for target, d_e in ((1120, 16), (50_000, 64), (2_363_904, 768)):
        best = min(range(1, 3000), key=lambda h: abs(LSTMLM.parameter_count(d_e, h) / target - 1))
        assert match_lstm(target, d_e, tolerance=1.0).size == best
        widths = range(2, 4000, 2)
        best = min(widths, key=lambda w: abs(TransformerLM.parameter_count(d_e, w, 1, 32) / target - 1))
        match = match_transformer(target, d_e, num_layers=1, num_heads=2, block_size=32, tolerance=1.0)
        assert (match.size, match.parameters) == (best, TransformerLM.parameter_count(d_e, best, 1, 32))
    assert SizeMatch(3, 110, 100).relative_gap == pytest.approx(0.1)
    # ties go to the smaller size; a gap equal to the tolerance is accepted
    assert _closest(100, [1, 2], lambda s: {1: 80, 2: 120}[s], 0.5, "x").size == 1
    assert _closest(100, [1], lambda s: 125, 0.25, "x").parameters == 125
    with pytest.raises(ValueError, match="within"):
        _closest(100, [1], lambda s: 125, 0.2, "x")
    with pytest.raises(ValueError, match="target must be >= 1"):
        match_lstm(0, 16)


def test_build_baseline_sizes_and_configures_each_model():
    from newllm.baselines.factory import build_baseline

    emb = torch.zeros(30, 16)
    target = TransformerLM.parameter_count(16, 48, 1, 32)  # a width-48 Transformer exactly
    model, size = build_baseline("lstm", emb, {"dropout": 0.25}, target, 0.1)
    assert isinstance(model, LSTMLM) and size == match_lstm(target, 16)
    assert model.hidden_size == size.size and model.dropout.p == 0.25 and count_parameters(model) == size.parameters
    settings = {"dropout": 0.1, "num_layers": 1, "num_heads": 4, "block_size": 32, "eval_stride": 5}
    model, size = build_baseline("transformer", emb, settings, target, 0.1)
    assert (size.size, size.parameters, size.target) == (48, target, target)
    assert isinstance(model, TransformerLM) and model.width == 48 and count_parameters(model) == target
    # the most heads (up to 4) at least 16 wide: 48 = 3 x 16
    assert (len(model.blocks), model.blocks[0].attn.num_heads, model.block_size, model.eval_stride) == (1, 3, 32, 5)
    assert model.drop.p == 0.1 and model.blocks[0].attn.dropout == 0.1
    with pytest.raises(ValueError, match="neural baselines"):
        build_baseline("gru", emb, settings, target, 0.1)


def test_train_flops_with_another_vocabulary():
    assert train_flops(10, 3, vocab_size=7, embed_dim=4) == 6 * 10 * 3 + 4 * 7 * 4 * 3


def test_transformer_forward_adds_positions_then_runs_the_blocks_and_the_readout():
    from newllm.baselines.models import embed

    torch.manual_seed(0)
    emb = torch.randn(20, 8)
    model = TransformerLM(emb, TransformerConfig(16, num_layers=2, num_heads=2, block_size=8)).eval()
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])
    with torch.no_grad():
        x = model.input(embed(emb, tokens)) + model.position.weight[:6]
        for block in model.blocks:
            x = block(x)
        torch.testing.assert_close(model(tokens)[0], model.readout(x))


def test_size_matching_tolerances_and_the_smallest_sizes():
    from newllm.baselines.factory import build_baseline

    # LSTM at d_e = 16: 4H² + 88H + 48 = 140, 240 for H = 1, 2; a target of 180: H = 1 misses by 22 %
    with pytest.raises(ValueError, match="no LSTM hidden size matches 180 .* within 10%"):
        match_lstm(180, 16)
    assert match_lstm(180, 16, tolerance=0.3).size == 1
    # sizes start at 1 even when a smaller target would be closer to "size 0"
    assert match_lstm(1, 16, tolerance=1000.0).size == 1
    # Transformer d_e = 16, L = 1, block 4: 12W² + 50W + 48 = 196, 440 for W = 2, 4 -> 300 misses by 35 %
    with pytest.raises(ValueError, match="no Transformer width size matches 300 .* within 10%"):
        match_transformer(300, 16, num_layers=1, num_heads=2, block_size=4)
    assert match_transformer(300, 16, num_layers=1, num_heads=2, block_size=4, tolerance=0.5).size == 2
    # build_baseline passes its tolerance on
    emb = torch.zeros(30, 16)
    model, size = build_baseline("lstm", emb, {"dropout": 0.0}, 180, 0.3)
    assert size.size == 1 and model.hidden_size == 1
    settings = {"dropout": 0.0, "num_layers": 1, "num_heads": 2, "block_size": 4, "eval_stride": None}
    model, size = build_baseline("transformer", emb, settings, 300, 0.5)
    # any width (heads are chosen after it): 3 (306 parameters) is closer than 2 (the multiple of 2 heads)
    assert size.size == 3 and model.width == 3 and model.blocks[0].attn.num_heads == 1 and model.eval_stride == 2
