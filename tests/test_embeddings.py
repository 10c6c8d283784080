import math

import numpy as np
import pytest
import torch

from newllm.bigram import (
    BigramConfig,
    BigramCounts,
    _WeightedLogSumExp,
    bigram_loss,
    bigram_matrix,
    fit_bigram_head,
    split_heldout,
    token_nll,
    train_bigram_embeddings,
    train_bigram_model,
    unigram_loss,
)
from newllm.embeddings import check_embedding_config, gpt2_embeddings, random_embeddings, rescale_rows, word2vec_embeddings
from newllm.tokenizer import EOT_ID, VOCAB_SIZE

FAST = BigramConfig(lr=0.05, batch_tokens=512, eval_every=10, patience=3, min_steps=60, max_steps=800, weight_decay=0.0, chunk=64)


def successor_stream(num_conversations: int, seed: int) -> np.ndarray:
    """Conversations ``a s(a)`` joined by EOT: ``a`` uniform over 20 ids, ``s`` a fixed bijection.

    Targets: ``s(a) | a`` and ``EOT | s(a)`` are deterministic, ``a | EOT`` is uniform, so a
    perfect bigram model has PPL 1 on the pairs and ``20^(1/3) ≈ 2.71`` overall.
    """
    rng = np.random.default_rng(seed)
    succ = 1000 + np.random.default_rng(123).permutation(20)
    firsts = rng.integers(0, 20, num_conversations)
    convs = [np.array([a, succ[a]]) for a in firsts]
    return np.concatenate([np.r_[c, EOT_ID] for c in convs])[:-1].astype(np.int64)


@pytest.fixture(scope="module")
def toy_model():
    stream = successor_stream(600, seed=0)
    return stream, *train_bigram_model(stream, 8, seed=0, cfg=FAST)


def test_gpt2_wte_from_a_local_tiny_checkpoint(tmp_path):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=VOCAB_SIZE, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    model.save_pretrained(tmp_path / "tiny-gpt2")
    matrix = gpt2_embeddings(str(tmp_path / "tiny-gpt2"))
    assert matrix.shape == (VOCAB_SIZE, 8)
    assert np.array_equal(matrix, model.wte.weight.detach().numpy())


def test_gpt2_wrong_vocabulary_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(vocab_size=100, n_embd=8, n_layer=1, n_head=2, n_positions=16)).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="vocabulary 100"):
        gpt2_embeddings(str(tmp_path / "m"))


def test_word2vec_is_seeded_and_covers_the_pool():
    rng = np.random.default_rng(0)
    stream = np.concatenate([np.r_[rng.integers(0, 40, 30), EOT_ID] for _ in range(20)])
    a, info = word2vec_embeddings(stream, 8, seed=3, epochs=2)
    b, _ = word2vec_embeddings(stream, 8, seed=3, epochs=2)
    assert a.shape == (VOCAB_SIZE, 8) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert info["covered_types"] == np.unique(stream).size
    assert info["sentences"] == 20


def test_random_and_rescale():
    m = rescale_rows(random_embeddings(4, seed=1), 1.0)
    assert np.linalg.norm(m, axis=1).mean() == pytest.approx(1.0, rel=1e-5)
    assert np.array_equal(random_embeddings(4, seed=1), random_embeddings(4, seed=1))


@pytest.mark.parametrize("source,dim", [("bigram", 0), ("word2vec", -3), ("random", 2.5), ("bigram", True), ("bigram", None)])
def test_bad_embed_dim_is_a_clear_error(source, dim):
    with pytest.raises(ValueError, match="embed_dim must be a positive integer"):
        check_embedding_config(source, dim)
    with pytest.raises(ValueError, match="embed_dim"):
        train_bigram_model(successor_stream(10, 0), dim, seed=0, cfg=FAST) if source == "bigram" else random_embeddings(dim, 0)


def test_bad_source_and_config_are_clear_errors():
    with pytest.raises(ValueError, match="is not one of bigram, word2vec, gpt2, random"):
        check_embedding_config("glove", 64)
    check_embedding_config("gpt2", None)  # gpt2 takes d_e from its checkpoint
    with pytest.raises(ValueError, match="unknown embeddings.bigram keys"):
        BigramConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="at least two conversations"):
        split_heldout(np.arange(10), 0.1)


def test_split_heldout_cuts_at_a_conversation_boundary():
    stream = successor_stream(20, 0)
    train, held = split_heldout(stream, 0.1)
    assert (train == EOT_ID).sum() == 17 and (held == EOT_ID).sum() == 1  # 18 + 2 conversations
    assert np.array_equal(np.r_[train, EOT_ID, held], stream)


def test_counts_group_pairs_by_context():
    stream = np.array([5, 7, 5, 7, 5, 9])
    counts = BigramCounts.from_stream(stream, np.arange(VOCAB_SIZE))
    assert counts.contexts.tolist() == [5, 7] and counts.weights.tolist() == [3, 2] and counts.tokens == 5
    local, cols, vals = counts.rows(np.array([0, 1]))
    assert list(zip(local.tolist(), cols.tolist(), vals.tolist())) == [(0, 7, 2), (0, 9, 1), (1, 5, 2)]


def test_fused_weighted_logsumexp_matches_autograd():
    torch.manual_seed(0)
    h = torch.randn(7, 3, requires_grad=True)
    rows = torch.randn(11, 3, requires_grad=True)
    log_mult, w = torch.zeros(11), torch.rand(7)
    log_mult[-1] = 2.0
    out = _WeightedLogSumExp.apply(h, rows, log_mult, w, 3)
    out.backward()
    h2, rows2 = h.detach().clone().requires_grad_(), rows.detach().clone().requires_grad_()
    ref = (w * torch.logsumexp(h2 @ rows2.T + log_mult, dim=1)).sum()
    ref.backward()
    assert float(out.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(h.grad, h2.grad, atol=1e-6) and torch.allclose(rows.grad, rows2.grad, atol=1e-6)


def test_bigram_learns_successor_pairs_and_beats_unigram(toy_model):
    stream, model, class_of, info = toy_model
    assert info["covered_types"] == 41 and info["unknown_ids"] == VOCAB_SIZE - 41  # 20 + 20 + EOT
    assert info["stopped_by"] == "early_stopping" and not info["undertrained"]
    history = info["history"]
    assert info["heldout_loss"] < history[0]["heldout_loss"] - 1.0  # training lowers held-out loss
    test = successor_stream(200, seed=1)
    nll = token_nll(model, class_of, test)
    pair_targets = np.flatnonzero(test[:-1] < 20)  # s(a) | a
    assert math.exp(nll[pair_targets].mean()) < 1.1  # a perfect model reaches 1
    ppl = math.exp(nll.mean())
    assert ppl < 3.2  # ideal 20^(1/3) ≈ 2.71
    assert ppl < math.exp(unigram_loss(stream, test)) / 5  # unigram ≈ 31
    assert math.exp(bigram_loss(model, BigramCounts.from_stream(test, class_of))) == pytest.approx(ppl, rel=1e-4)


def test_unknown_ids_share_a_low_row_and_the_full_vocab_head_agrees(toy_model):
    stream, model, class_of, _ = toy_model
    matrix, gain = bigram_matrix(model, class_of)
    assert matrix.shape == (VOCAB_SIZE, 8) and matrix.dtype == np.float32
    unseen = np.setdiff1d(np.arange(VOCAB_SIZE), stream)
    assert np.array_equal(matrix[unseen], np.broadcast_to(matrix[unseen[0]], (unseen.size, 8)))
    # The saved matrix as a full 50,257-way tied head (gain folded into E) gives the model's own NLL.
    e = torch.from_numpy(matrix)
    ctx = torch.from_numpy(stream[:200])
    with torch.no_grad():
        x = torch.nn.functional.layer_norm(e[ctx], (8,))
        z = model.proj(x)
        h = torch.nn.functional.layer_norm(z, (8,), model.norm.weight / gain, model.norm.bias / gain)
        logits = h @ e.T  # [n, V], exactly newllm.model.tied_logits
    full = torch.logsumexp(logits, 1) - logits.gather(1, torch.from_numpy(stream[1:201])[:, None]).squeeze(1)
    assert np.allclose(full.numpy(), token_nll(model, class_of, stream[:201]), rtol=1e-3, atol=1e-3)
    # Unseen ids' logits sit below every plausible successor's.
    seen_best = logits.max(dim=1).values
    assert bool((logits[:, unseen[0]] < seen_best - 5).all())


def test_bigram_embeddings_are_deterministic_per_seed():
    stream = successor_stream(200, seed=0)
    cfg = BigramConfig(lr=0.05, batch_tokens=256, eval_every=5, patience=2, min_steps=10, max_steps=30, chunk=16)
    a, info_a = train_bigram_embeddings(stream, 4, seed=7, cfg=cfg, eval_streams={"test": successor_stream(30, 1)})
    b, info_b = train_bigram_embeddings(stream, 4, seed=7, cfg=cfg, eval_streams={"test": successor_stream(30, 1)})
    c, _ = train_bigram_embeddings(stream, 4, seed=8, cfg=cfg)
    assert a.shape == (VOCAB_SIZE, 4) and a.dtype == np.float32
    assert np.array_equal(a, b) and info_a["test_ppl"] == info_b["test_ppl"]
    assert not np.array_equal(a, c)
    for key in ("train_tokens", "heldout_tokens", "test_ppl", "test_loss", "unigram_test_ppl", "folded_gain", "stopped_by"):
        assert key in info_a
    assert info_a["train_tokens"] + info_a["heldout_tokens"] + 1 == stream.size


def test_head_fit_on_frozen_embeddings_scores_word2vec_style_matrices():
    stream = successor_stream(300, seed=0)
    cfg = BigramConfig(
        lr=0.05, batch_tokens=256, eval_every=10, patience=2, min_steps=20, max_steps=200, weight_decay=0.0, chunk=64
    )
    random_head = fit_bigram_head(rescale_rows(random_embeddings(8, 0), 1.0), stream, 0, cfg, {"test": successor_stream(50, 1)})
    assert random_head["test_tokens"] == 148 and math.isfinite(random_head["test_ppl"])
    assert random_head["heldout_loss"] < random_head["history"][0]["heldout_loss"]  # f alone still learns
    assert random_head["model"] == "bigram head f trained on frozen E" and random_head["head_gain"] > 0
    with pytest.raises(ValueError, match="must be \\[50257, d_e\\]"):
        fit_bigram_head(np.zeros((10, 4), np.float32), stream, 0, cfg)


def test_schema_defaults_match_the_bigram_config_and_sources(repo):
    import dataclasses

    import yaml

    block = yaml.safe_load((repo / "config/schema.yaml").read_text())["properties"]["embeddings"]["properties"]
    assert tuple(block["source"]["enum"]) == ("bigram", "word2vec", "gpt2", "random")
    schema_defaults = {k: v["default"] for k, v in block["bigram"]["properties"].items()}
    assert schema_defaults == {f.name: f.default for f in dataclasses.fields(BigramConfig)}


@pytest.mark.parametrize("source", ["bigram", "random"])
def test_rule_script_writes_matrix_and_quality_meta(tmp_path, repo, source):
    import runpy
    from types import SimpleNamespace

    from newllm.data import write_stream
    from newllm.io import read_json
    from newllm.runtime import load_weights

    paths = {name: tmp_path / f"{name}.npy" for name in ("pool", "dev", "test")}
    for k, (name, path) in enumerate(paths.items()):
        write_stream(path, successor_stream({"pool": 200, "dev": 20, "test": 30}[name], seed=k), {})
    smk = SimpleNamespace(
        input=SimpleNamespace(**{k: str(v) for k, v in paths.items()}),
        output=SimpleNamespace(
            weights=str(tmp_path / "e.safetensors"), meta=str(tmp_path / "e.json"), test_token_nll=str(tmp_path / "nll.npy")
        ),
        params=SimpleNamespace(
            seed=0,
            embeddings={
                "source": source,
                "embed_dim": 4,
                "row_norm": 1.0,
                "score_head": True,
                "bigram": {"batch_tokens": 256, "eval_every": 5, "min_steps": 10, "max_steps": 40, "chunk": 64},
            },
        ),
        log=[str(tmp_path / "log.txt")],
        threads=1,
    )
    runpy.run_path(str(repo / "workflow_scripts/token_embeddings.py"), init_globals={"snakemake": smk}, run_name="__main__")
    matrix = load_weights(smk.output.weights)["embeddings"]
    meta = read_json(smk.output.meta)
    assert tuple(matrix.shape) == (VOCAB_SIZE, 4) and matrix.dtype == torch.float32
    assert meta["source"] == source and meta["test_tokens"] == 88 and math.isfinite(meta["test_ppl"])
    assert meta["train_tokens"] == (meta["slice_tokens"] - meta["heldout_tokens"] - 1 if source == "bigram" else 0)
    nll = np.load(smk.output.test_token_nll)  # the bigram's own per-target test NLL; none for other sources
    if source == "bigram":
        assert nll.shape == (88,) and float(nll.mean()) == pytest.approx(meta["test_loss"], rel=1e-5)
    else:
        assert nll.shape == (0,)
