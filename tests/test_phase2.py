import math

import pytest
import torch
import torch.nn.functional as F

from newllm.model import TokenBlock, TokenInput, init_weights, tied_logits
from newllm.phase2 import Phase2Config, Split, TiedCrossEntropy, evaluate, tied_head, tied_token_nll, train_phase2
from newllm.training import EarlyStopping


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_fused_tied_cross_entropy_matches_autograd(chunk):
    torch.manual_seed(0)
    E = torch.randn(50, 6)
    y = torch.randint(0, 50, (10,))
    h1 = torch.randn(10, 6, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    fused = TiedCrossEntropy.apply(h1, E, y, chunk)
    reference = F.cross_entropy(tied_logits(h2, E), y)
    (2.5 * fused).backward()
    (2.5 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(h1.grad, h2.grad, atol=1e-6)


def _head_with_shared_rows(V=60, d=6, shared=25, seed=0):
    """[V, d] embeddings whose last ``shared`` ids share one row (as the bigram stand-in's unknown ids)."""
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(V, d, generator=g)
    E[V - shared :] = torch.randn(d, generator=g)
    return E


def test_a_head_with_identical_rows_is_merged_exactly():
    E = _head_with_shared_rows()
    head = tied_head(E)
    assert head.rows.shape == (36, 6) and torch.equal(head.rows[head.class_of], E)
    assert sorted(head.log_mult.exp().round().tolist()) == [1.0] * 35 + [25.0]
    distinct = tied_head(torch.randn(60, 6))  # nothing to merge: the matrix itself
    assert distinct.log_mult is None and distinct.class_of is None and distinct.rows.shape == (60, 6)

    torch.manual_seed(1)
    y = torch.cat([torch.randint(0, 60, (30,)), torch.tensor([40, 59, 35, 0])])  # shared and own-row targets
    h1 = (3 * torch.randn(34, 6)).requires_grad_(True)
    h2 = h1.detach().clone().requires_grad_(True)
    for chunk in (1, 7, 64):
        merged = TiedCrossEntropy.apply(h1, head, y, chunk)
        full = F.cross_entropy(tied_logits(h2, E), y)
        merged.backward()
        full.backward()
        assert merged.item() == pytest.approx(full.item(), rel=1e-6)
        assert torch.allclose(h1.grad, h2.grad, atol=1e-6)
        h1.grad = h2.grad = None
        nll, correct = tied_token_nll(h1.detach(), head, y, chunk)
        full_logits = tied_logits(h1.detach(), E)
        reference = F.cross_entropy(full_logits, y, reduction="none")
        assert torch.allclose(nll, reference, rtol=1e-5, atol=1e-5)
        # a hit: the target's logit is the row maximum (ids sharing a row tie by construction)
        assert torch.equal(correct, full_logits.gather(1, y[:, None]).squeeze(1) >= full_logits.max(dim=1).values)


def test_per_token_nll_and_accuracy():
    E = torch.eye(3)
    h = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    nll, correct = tied_token_nll(h, E, torch.tensor([0, 2]), chunk_tokens=1)
    expected = -torch.log_softmax(h, 1)[[0, 1], [0, 2]]
    assert torch.allclose(nll, expected) and correct.tolist() == [True, False]


def _phase2_setup(n=300, d_c=4, d_e=32, seed=0):
    torch.manual_seed(seed)
    token_input = TokenInput(torch.randn(40, d_e), 1)
    block = TokenBlock(d_c, d_e, d_e)
    init_weights(block)
    stream = torch.arange(n) % 40  # a perfectly predictable cycle
    cache = torch.randn(n, 1, d_c)
    return block, token_input, stream, cache


def test_evaluation_in_batches_equals_one_batch_and_matches_the_per_token_nll():
    block, token_input, stream, cache = _phase2_setup(n=211)
    split = Split(stream, cache)
    one = evaluate(block, token_input, split, Phase2Config(eval_batch_size=4096, chunk_tokens=4096), return_token_nll=True)
    many = evaluate(block, token_input, split, Phase2Config(eval_batch_size=7, chunk_tokens=3), return_token_nll=True)
    assert one["tokens"] == 210 and one["token_nll"].shape == (210,)
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-6) and many["accuracy"] == one["accuracy"]
    assert one["loss"] == pytest.approx(float(one["token_nll"].astype("float64").mean()), rel=1e-6)
    # target i is stream[i+1], predicted from x̃_i and cache[i]
    with torch.no_grad():
        logits = tied_logits(block(cache[:-1], token_input(stream, torch.arange(210))), token_input.weight)
    reference = torch.nn.functional.cross_entropy(logits, stream[1:], reduction="none")
    assert torch.allclose(torch.from_numpy(one["token_nll"]), reference, atol=1e-5)


def test_no_context_reads_zero_contexts():
    block, token_input, stream, cache = _phase2_setup(n=50)
    cfg = Phase2Config(chunk_tokens=16)
    zeros = evaluate(block, token_input, Split(stream, torch.zeros_like(cache)), cfg)
    none = evaluate(block, token_input, Split(stream, None), cfg)
    assert none["loss"] == zeros["loss"]


def test_phase2_learns_a_predictable_stream_and_keeps_the_best_steps_weights():
    block, token_input, stream, cache = _phase2_setup()
    # dev: the same cycle with every 5th token replaced: learnable, but a model that grows
    # over-confident on the cycle gets worse on dev, so early stopping fires
    noisy = stream.clone()
    noisy[::5] = torch.randint(0, 40, noisy[::5].shape, generator=torch.Generator().manual_seed(1))
    dev = Split(noisy, cache)
    cfg = Phase2Config(
        max_steps=3000, min_steps=20, eval_every=10, patience=3, batch_size=32, chunk_tokens=16, learning_rate=1e-2
    )
    result = train_phase2(block, token_input, Split(stream, cache), dev, cfg, seed=0)
    h, summary = result.history, result.summary
    assert h[0]["dev_ppl"] > summary["dev_ppl"]
    assert summary["dev_ppl"] == pytest.approx(math.exp(summary["dev_loss"]))
    assert summary["dev_accuracy"] > 0.5  # chance is 1/40; a replaced token spoils 2 of every 5 targets
    assert evaluate(block, token_input, dev, cfg)["loss"] == pytest.approx(summary["dev_loss"], rel=1e-5)
    best = min(h, key=lambda r: r["dev_loss"])
    assert summary["best_step"] == best["step"] and summary["stopped_by"] == "early_stopping"
    assert summary["undertrained"] is False
    assert [r["step"] for r in h] == list(range(10, summary["steps"] + 1, 10))


def test_early_stopping_stops_after_patience_evaluations_but_not_before_min_steps():
    block, token_input, stream, cache = _phase2_setup()
    dev = Split(torch.randint(0, 40, (100,)), torch.randn(100, 1, 4))  # unpredictable: dev stops improving
    cfg = Phase2Config(
        max_steps=5000, min_steps=120, eval_every=10, patience=2, batch_size=32, chunk_tokens=16, learning_rate=5e-2
    )
    result = train_phase2(block, token_input, Split(stream, cache), dev, cfg, seed=0)
    s = result.summary
    assert s["stopped_by"] == "early_stopping" and s["steps"] >= 120
    worse_since_best = [r for r in result.history if r["step"] > s["best_step"]]
    assert len(worse_since_best) >= 2 and all(r["dev_loss"] >= s["dev_loss"] for r in worse_since_best)
    if s["steps"] > 120:  # stopped as soon as patience ran out after min_steps
        assert len(worse_since_best) == 2


def test_every_evaluation_without_improvement_multiplies_the_learning_rate_by_lr_decay():
    block, token_input, stream, cache = _phase2_setup()
    dev = Split(torch.randint(0, 40, (100,)), torch.randn(100, 1, 4))  # unpredictable: dev stops improving
    cfg = Phase2Config(
        max_steps=400, min_steps=0, eval_every=10, patience=4, batch_size=32, chunk_tokens=16, learning_rate=5e-2, lr_decay=0.3
    )
    result = train_phase2(block, token_input, Split(stream, cache), dev, cfg, seed=0)
    h, lr, best = result.history, 5e-2, math.inf
    for record in h:  # the rate an evaluation reports is the one its steps ran at
        assert record["learning_rate"] == pytest.approx(lr, rel=1e-12)
        if record["dev_loss"] < best - cfg.min_delta:  # an improvement (EarlyStopping's rule)
            best = record["dev_loss"]
        else:
            lr *= 0.3
    assert any(r["learning_rate"] < 5e-2 for r in h)
    assert result.summary["final_learning_rate"] == pytest.approx(lr, rel=1e-12)


def test_a_run_that_hits_max_steps_is_flagged_undertrained():
    block, token_input, stream, cache = _phase2_setup()
    cfg = Phase2Config(max_steps=25, min_steps=0, eval_every=10, patience=5, batch_size=32, chunk_tokens=16, learning_rate=1e-2)
    result = train_phase2(block, token_input, Split(stream, cache), Split(stream, cache), cfg, seed=0)
    assert result.summary["stopped_by"] == "max_steps" and result.summary["undertrained"] is True
    assert result.summary["steps"] == 25 and [r["step"] for r in result.history] == [10, 20, 25]


def test_early_stopping_that_fires_at_the_last_allowed_step_is_reported_as_early_stopping():
    stopper = EarlyStopping(patience=1, min_steps=0, max_steps=30)
    assert not stopper.update(10, 1.0) and not stopper.update(20, 0.5)
    assert stopper.update(30, 0.7)  # no improvement at the budget: the criterion fired
    assert stopper.stopped_by == "early_stopping" and not stopper.undertrained and stopper.best_step == 20
    budget = EarlyStopping(patience=2, min_steps=0, max_steps=30)
    budget.update(10, 1.0), budget.update(20, 0.9)
    assert budget.update(30, 0.8) and budget.stopped_by == "max_steps" and budget.undertrained


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_result():
    """A GPU OOM is simulated on CPU: forward passes over more than 8 tokens fail.
    Accumulated micro-batches give the same training as whole batches."""
    reference_block, token_input, stream, cache = _phase2_setup(n=120)
    cfg = Phase2Config(max_steps=8, min_steps=0, eval_every=4, patience=2, batch_size=32, chunk_tokens=16)
    reference = train_phase2(reference_block, token_input, Split(stream, cache), Split(stream, cache), cfg, seed=0).summary

    block, token_input, stream, cache = _phase2_setup(n=120)
    forward = block.forward

    def limited(contexts, x):
        if x.shape[0] > 8 and block.training:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(contexts, x)

    block.forward = limited
    sizes = []
    summary = train_phase2(
        block, token_input, Split(stream, cache), Split(stream, cache), cfg, seed=0, on_oom=sizes.append
    ).summary
    assert sizes == [16, 8] and summary["micro_batch_size"] == 8
    assert summary["dev_loss"] == pytest.approx(reference["dev_loss"], rel=1e-5)
    for a, b in zip(block.state_dict().values(), reference_block.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_other_runtime_errors_are_not_swallowed():
    block, token_input, stream, cache = _phase2_setup(n=50)

    def broken(contexts, x):
        raise RuntimeError("shape mismatch")

    block.forward = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_phase2(
            block, token_input, Split(stream, cache), Split(stream, cache), Phase2Config(max_steps=1, min_steps=0), seed=0
        )


def test_a_zero_learning_rate_epoch_reports_the_evaluated_losses():
    # 128 targets in batches of 32: one evaluation every 4 steps is one epoch, every target
    # once; with learning rate 0 the weights never move, so the mean training loss of each
    # epoch is the evaluated training loss and every dev loss the evaluated dev loss
    block, token_input, stream, cache = _phase2_setup(n=129)
    train, dev = Split(stream, cache), Split(stream.flip(0), cache)
    cfg = Phase2Config(max_steps=8, min_steps=0, eval_every=4, patience=5, batch_size=32, chunk_tokens=16, learning_rate=0.0)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    train_loss = evaluate(block, token_input, train, cfg)["loss"]
    dev_eval = evaluate(block, token_input, dev, cfg)
    result = train_phase2(block, token_input, train, dev, cfg, seed=0)
    assert [r["step"] for r in result.history] == [4, 8] and [r["epoch"] for r in result.history] == [1, 2]
    for record in result.history:
        assert record["train_loss"] == pytest.approx(train_loss, rel=1e-5)
        assert record["dev_loss"] == pytest.approx(dev_eval["loss"], rel=1e-6)
        assert record["dev_accuracy"] == dev_eval["accuracy"] and record["learning_rate"] == 0.0
    assert result.summary["best_step"] == 4 and result.summary["stopped_by"] == "max_steps"  # an equal loss is no improvement
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
