import math
import re
import time

import pytest
import torch
import torch.nn.functional as F

from newllm.model import ModelConfig, TokenBlock, TokenInput, init_weights, tied_logits
from newllm.phase2 import Phase2Config, Split, TiedCrossEntropy, TiedHead, evaluate, tied_head, tied_token_nll, train_phase2
from newllm.training import EarlyStopping, TrainingDivergedError


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
    block = TokenBlock(ModelConfig(d_c, d_e))
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


# --- expected values from the definitions (issue 14: mutation testing) ---------------------


def test_phase2_config_defaults_are_the_schema_defaults_and_chunk_tokens_per_device():
    from pathlib import Path

    from newllm.config import load_schema, section_defaults

    schema = load_schema(Path(__file__).resolve().parents[1] / "config" / "schema.yaml")
    assert Phase2Config() == Phase2Config(**section_defaults(schema, "phase2"))
    assert Phase2Config.from_dict({}).chunk_tokens == 128
    assert Phase2Config.from_dict({"chunk_tokens": None}, torch.device("cpu")).chunk_tokens == 128
    assert Phase2Config.from_dict({"chunk_tokens": None}, torch.device("cuda")).chunk_tokens == 4096
    assert Phase2Config.from_dict({"chunk_tokens": 8, "batch_size": None}, torch.device("cuda")) == Phase2Config(chunk_tokens=8)


def test_bf16_head_target_logit_is_exact_and_the_rest_rounded_by_hand():
    # h·E_0 = 1 + 2^-9 rounds to 1.0 in bf16 (spacing 2^-7 near 1); h·E_1 = 1 exactly.
    # The target logit is recomputed exactly: NLL = log(e^(1+2^-9) + e^1) - (1+2^-9)
    E = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    head = tied_head(E, "bf16")
    assert head.rows.dtype == torch.bfloat16 and torch.equal(head.rows.float(), E) and head.log_mult is None
    assert tied_head(E).rows.dtype == torch.float32
    h, eps = torch.tensor([[1.0, 2.0**-9]]), 2.0**-9
    nll, correct = tied_token_nll(h, head, torch.tensor([0]), chunk_tokens=4)
    assert nll.item() == pytest.approx(math.log1p(math.exp(-eps)), rel=1e-6) and correct.tolist() == [True]
    # the fused loss: the same value; ∂L/∂h = (Σ_c e_c E_c) / Z - E_y with e = (1, e^-eps) rounded to bf16 (1, 1)
    hidden = h.clone().requires_grad_(True)
    loss = TiedCrossEntropy.apply(hidden, head, torch.tensor([0]), 4)
    loss.backward()
    z = 1 + math.exp(-eps)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-eps)), rel=1e-6)
    assert torch.allclose(hidden.grad, torch.tensor([[2 / z - 1, 1 / z - 1]]), atol=1e-7)
    # a bf16 hidden state gets a bf16 gradient
    bf = h.bfloat16().requires_grad_(True)
    TiedCrossEntropy.apply(bf, head, torch.tensor([0]), 4).backward()
    assert bf.grad.dtype == torch.bfloat16


def test_a_merged_bf16_head_keeps_the_multiplicities():
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # ids 1..3 share a row
    head = tied_head(E, "bf16")
    assert head.rows.dtype == torch.bfloat16 and torch.equal(head.rows.float()[head.class_of], E)
    assert torch.allclose(head.log_mult.exp(), torch.tensor([1.0, 3.0])[head.classes(torch.tensor([0, 1]))])
    # h = (2, 0): logits (2, 0, 0, 0): NLL of id 0 = log(e^2 + 3) - 2, of id 2 = log(e^2 + 3)
    nll, correct = tied_token_nll(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), head, torch.tensor([0, 2]), 1)
    assert torch.allclose(nll, torch.tensor([math.log(math.e**2 + 3) - 2, math.log(math.e**2 + 3)]), atol=1e-6)
    assert correct.tolist() == [True, False]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shared", [0, 25])
def test_a_padded_head_gives_the_loss_gradient_and_hits_of_the_unpadded_one(precision, shared):
    # 60 ids (36 distinct rows with 25 shared) padded to 64 rows: the padding rows' logits
    # are -inf in every chunk, so they never enter the softmax, the gradient or the top-1
    # comparison -- even where every real logit is negative and a padding row's raw logit
    # (0) would be the largest
    E = _head_with_shared_rows(shared=shared) if shared else torch.randn(60, 6, generator=torch.Generator().manual_seed(3))
    plain, padded = tied_head(E, precision), tied_head(E, precision, pad_multiple=64)
    assert plain.pad == 0 and padded.pad == 64 - plain.rows.shape[0] and padded.rows.shape[0] == 64
    assert torch.equal(padded.rows[: plain.rows.shape[0]], plain.rows) and not padded.rows[-padded.pad :].any()
    assert tied_head(E, precision, pad_multiple=plain.rows.shape[0]).pad == 0
    gen = torch.Generator().manual_seed(4)
    y = torch.randint(0, 60, (20,), generator=gen)
    h = 3 * torch.randn(20, 6, generator=gen)
    h[:5] = -10 * E[y[:5]] / E[y[:5]].norm(dim=1, keepdim=True)  # strongly negative logits for some rows
    for chunk in (1, 7, 64):
        results = []
        for head in (plain, padded):
            hidden = h.clone().requires_grad_(True)
            loss = TiedCrossEntropy.apply(hidden, head, y, chunk)
            loss.backward()
            results.append((loss.detach(), hidden.grad, *tied_token_nll(h, head, y, chunk)))
        (l1, g1, n1, c1), (l2, g2, n2, c2) = results
        assert torch.allclose(l1, l2, rtol=1e-6) and torch.allclose(g1, g2, atol=1e-6)
        assert torch.allclose(n1, n2, rtol=1e-6, atol=1e-6) and torch.equal(c1, c2)
    assert torch.isfinite(padded.shifted_rows_t[:, : plain.rows.shape[0]]).all()
    assert padded.shifted_rows_t[6, -padded.pad :].eq(float("-inf")).all()  # ln m row of the padding


def test_the_head_is_padded_to_a_multiple_of_64_on_cuda_only():
    from newllm.phase2 import head_pad_multiple

    assert head_pad_multiple(torch.device("cuda")) == 64 and head_pad_multiple(torch.device("cpu")) == 1
    assert tied_head(torch.randn(70, 4)).pad == 0  # CPU: results stay those of an unpadded head, bit for bit
    assert tied_head(torch.randn(70, 4), pad_multiple=64).rows.shape == (128, 4)


def test_tied_token_nll_counts_an_exact_tie_for_the_maximum_as_a_hit():
    E = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    nll, correct = tied_token_nll(torch.tensor([[3.0, 1.0]]), TiedHead(E), torch.tensor([1]), chunk_tokens=2)
    assert correct.tolist() == [True]
    assert nll.item() == pytest.approx(math.log(2 * math.e**3 + math.e) - 3, rel=1e-6)


def test_split_batch_reads_the_cache_rows_and_the_next_tokens():
    import numpy as np

    stream = torch.tensor([5, 6, 7, 8, 9])
    cache = torch.arange(40.0).reshape(5, 2, 4)
    split = Split(stream, cache)
    token_input = TokenInput(torch.arange(30.0).reshape(10, 3), 1)
    pos = torch.tensor([3, 0])
    ctx, x, y = split.batch(pos, token_input, 2, 4)
    assert split.targets == 4 and torch.equal(ctx, cache[[3, 0]]) and y.tolist() == [9, 6]
    assert torch.equal(x, token_input(stream, pos))
    ctx_np, x_np, y_np = Split(stream, cache.numpy()).batch(pos, token_input, 2, 4)  # a memory map is gathered per batch
    assert torch.equal(ctx_np, ctx) and torch.equal(x_np, x) and torch.equal(y_np, y)
    assert isinstance(np.asarray(cache.numpy()), np.ndarray)
    zeros, _, _ = Split(stream, None).batch(pos, token_input, 2, 4)
    assert torch.equal(zeros, torch.zeros(2, 2, 4))


def test_accumulated_micro_batches_give_the_whole_batchs_loss_and_gradient():
    block, token_input, stream, cache = _phase2_setup(n=30)
    split, pos = Split(stream, cache), torch.tensor([3, 17, 0, 28, 9, 11, 4, 21, 5, 13])
    from newllm.phase2 import accumulate_step

    block.zero_grad()
    loss = accumulate_step(block, token_input, split, pos, micro=3, chunk_tokens=2)  # 3 + 3 + 3 + 1
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    reference = F.cross_entropy(tied_logits(block(cache[pos], token_input(stream, pos)), token_input.weight), stream[pos + 1])
    reference.backward()
    # a 0-dim float64 tensor, left on the device until the trainer reads an interval's losses
    assert loss.shape == () and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, block.parameters()))


def test_one_part_batch_loss_is_the_float32_loss_exactly_and_intervals_name_the_bad_step():
    from newllm.phase2 import _interval_losses, accumulate_step

    block, token_input, stream, cache = _phase2_setup(n=30)
    split, pos = Split(stream, cache), torch.tensor([3, 17, 0, 28, 9, 11, 4, 21, 5, 13])
    value = accumulate_step(block, token_input, split, pos, micro=10, chunk_tokens=4)
    ctx, x, y = split.batch(pos, token_input, block.num_layers, block.context_dim)
    loss = TiedCrossEntropy.apply(block(ctx, x), tied_head(token_input.weight), y, 4)
    assert value.item() == float(loss.detach())  # loss · 10 / 10 in float64 is exact; in float32 it need not be
    pending = [torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)]
    assert _interval_losses(pending, 12, "run", None) == [2.0, 1.5]
    with pytest.raises(TrainingDivergedError, match=r"^Phase 2 run, step 12: non-finite loss nan; last finite values: x"):
        _interval_losses([*pending, torch.tensor(float("nan"))][1:], 12, "run", "x")  # steps 11, 12


def test_evaluation_reports_accuracy_and_perplexity_of_the_per_token_predictions():
    block, token_input, stream, cache = _phase2_setup(n=40)
    stream = torch.randint(0, 40, (40,), generator=torch.Generator().manual_seed(3))
    result = evaluate(block, token_input, Split(stream, cache), Phase2Config(eval_batch_size=6, chunk_tokens=4))
    with torch.no_grad():
        logits = tied_logits(block(cache[:-1], token_input(stream, torch.arange(39))), token_input.weight)
    loss = F.cross_entropy(logits, stream[1:]).item()
    hits = (logits.argmax(dim=1) == stream[1:]).sum().item()
    assert 0 < hits < 39 and result["accuracy"] == hits / 39 and result["tokens"] == 39
    assert result["loss"] == pytest.approx(loss, rel=1e-6) and result["ppl"] == math.exp(result["loss"])
    assert "token_nll" not in result and block.training is False


def test_shuffled_batches_cover_each_epoch_once_and_resume_mid_epoch():
    from newllm.phase2 import _Batches

    batches = _Batches(5, 2, seed=7, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(7)
    first, second = torch.randperm(5, generator=gen), torch.randperm(5, generator=gen)
    drawn = [batches.next().tolist() for _ in range(3)]
    assert drawn == [first[:2].tolist(), first[2:4].tolist(), first[4:].tolist()] and batches.epoch == 1
    assert batches.next().tolist() == second[:2].tolist() and batches.state()[0] == {"epoch": 2, "offset": 2}
    state, epoch_rng = batches.state()
    rest = [batches.next().tolist() for _ in range(4)]
    again = _Batches(5, 2, seed=0, device=torch.device("cpu"))
    again.restore(state, epoch_rng)
    assert again.state()[0] == {"epoch": 2, "offset": 2} and torch.equal(again.state()[1], epoch_rng)
    assert [again.next().tolist() for _ in range(4)] == rest


def test_anneal_multiplies_the_rate_only_after_an_evaluation_that_did_not_improve():
    from newllm.phase2 import _anneal

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.8)
    stopper = EarlyStopping(patience=5, min_steps=0, max_steps=100)
    stopper.update(10, 1.0)
    _anneal(optimizer, stopper, 10, 0.25)  # step 10 is the best: no change
    assert optimizer.param_groups[0]["lr"] == 0.8
    stopper.update(20, 1.5)
    _anneal(optimizer, stopper, 20, 0.25)
    assert optimizer.param_groups[0]["lr"] == 0.2


def test_phase2_summary_and_dev_record_by_hand():
    from types import SimpleNamespace

    from newllm.phase2 import _dev_evaluation, _phase2_summary

    block, token_input, stream, cache = _phase2_setup(n=21)
    dev = Split(stream, cache)
    cfg = Phase2Config(batch_size=8, chunk_tokens=16)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.3)
    n = {"step": 30, "tokens": 240, "train_seconds": 2.0, "eval_seconds": 1.0}
    block.eval()
    t0 = time.perf_counter()
    record = _dev_evaluation(block, token_input, dev, cfg, "fp32", None, n, [1.0, 2.0], 4, optimizer)
    assert 1.0 < n["eval_seconds"] <= 1.0 + time.perf_counter() - t0  # its own time added
    assert block.training  # back to training after the evaluation
    dev_eval = evaluate(block, token_input, dev, cfg)
    assert record == {
        "step": 30,
        "epoch": 4,
        "train_loss": 1.5,
        "train_ppl": math.exp(1.5),
        "dev_loss": dev_eval["loss"],
        "dev_ppl": dev_eval["ppl"],
        "dev_accuracy": dev_eval["accuracy"],
        "learning_rate": 0.3,
        "tokens_per_s": 120.0,  # 240 tokens trained in 2 s
    }
    history = [dict(record, step=10, dev_loss=9.0), record]
    state = SimpleNamespace(history=history, optimizer=optimizer)
    stopper = SimpleNamespace(best_step=30, stopped_by="max_steps", undertrained=True)
    # 300 tokens in 40 steps of at most 8: short last batches of epochs count what they hold
    counters = {"step": 40, "tokens": 300, "train_seconds": 4.0, "eval_seconds": 1.5, "resumed_from_step": 20, "micro": 4}
    summary = _phase2_summary(state, stopper, counters, Split(torch.arange(81), None), dev, "bf16")
    assert summary == {
        "steps": 40,
        "epochs": 3.75,  # 300 tokens over 80 targets
        "tokens_processed": 300,
        "best_step": 30,
        "stopped_by": "max_steps",
        "undertrained": True,
        "resumed_from_step": 20,
        "micro_batch_size": 4,
        "dev_loss": dev_eval["loss"],
        "dev_ppl": dev_eval["ppl"],
        "dev_accuracy": dev_eval["accuracy"],
        "train_ppl": math.exp(1.5),
        "final_learning_rate": 0.3,
        "train_tokens": 80,
        "dev_tokens": 20,
        "train_seconds": 4.0,
        "eval_seconds": 1.5,
        "tokens_per_s": 75.0,
        "precision": "bf16",
    }
    counters["train_seconds"] = 0.0  # a clock that did not move: no division by zero
    assert _phase2_summary(state, stopper, counters, Split(torch.arange(81), None), dev, "fp32")["tokens_per_s"] == 300 / 1e-9


def test_a_resumed_phase2_run_equals_the_uninterrupted_one(tmp_path):
    from newllm.checkpoint import CheckpointSpec

    cfg = Phase2Config(max_steps=12, min_steps=0, eval_every=2, patience=9, batch_size=16, chunk_tokens=8, learning_rate=1e-2)

    def run(spec, on_batch=None):
        block, token_input, stream, cache = _phase2_setup(n=41)
        dev = Split(stream.flip(0), cache)
        result = train_phase2(block, token_input, Split(stream, cache), dev, cfg, seed=3, checkpoint=spec, on_batch=on_batch)
        return block, result

    saves, sizes = [], []
    block, whole = run(CheckpointSpec(tmp_path / "a.safetensors", "x", every=2, on_save=saves.append), sizes.append)
    assert saves == [2, 4] and whole.summary["stopped_by"] == "max_steps"  # never at the stop (records 6)
    assert sizes == [16, 16, 8] * 4  # 40 targets: two full batches and the rest, epoch after epoch

    def kill(records):
        if records == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(CheckpointSpec(tmp_path / "b.safetensors", "x", every=2, on_save=kill))
    resumed_block, resumed = run(CheckpointSpec(tmp_path / "b.safetensors", "x", every=2))
    assert resumed.summary["resumed_from_step"] == 8 and whole.summary["resumed_from_step"] is None
    timing = {"tokens_per_s", "train_seconds", "eval_seconds", "resumed_from_step"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in timing} for r in whole.history
    ]
    assert {k: v for k, v in resumed.summary.items() if k not in timing} == {
        k: v for k, v in whole.summary.items() if k not in timing
    }
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), resumed_block.state_dict().values()))


def test_an_out_of_memory_runtime_error_is_retried_down_to_one_token_then_raised():
    block, token_input, stream, cache = _phase2_setup(n=50)

    def oom(contexts, x):
        raise RuntimeError("CUDA error: Out Of Memory while allocating")

    block.forward = oom
    sizes = []
    cfg = Phase2Config(max_steps=1, min_steps=0, batch_size=16, chunk_tokens=8)
    with pytest.raises(RuntimeError, match="Out Of Memory"):
        train_phase2(block, token_input, Split(stream, cache), Split(stream, cache), cfg, seed=0, on_oom=sizes.append)
    assert sizes == [8, 4, 2, 1]


def test_the_tied_head_is_made_once_per_run(monkeypatch):
    import newllm.phase2 as phase2

    made = []

    def counted(*args, **kwargs):
        made.append(args[1:] + tuple(kwargs.values()))
        return tied_head(*args, **kwargs)

    monkeypatch.setattr(phase2, "tied_head", counted)
    block, token_input, stream, cache = _phase2_setup(n=41)
    cfg = Phase2Config(max_steps=6, min_steps=0, eval_every=2, patience=9, batch_size=16, chunk_tokens=8)
    train_phase2(block, token_input, Split(stream, cache), Split(stream, cache), cfg, seed=0, precision="bf16")
    assert made == [("bf16",)]  # 6 steps and 3 evaluations share it


def test_a_bf16_run_evaluates_in_bf16():
    # learning rate 0: the weights never move, so every dev loss is the bf16 evaluation of the start weights
    block, token_input, stream, cache = _phase2_setup(n=41)
    dev = Split(stream.flip(0), cache)
    cfg = Phase2Config(max_steps=4, min_steps=0, eval_every=2, patience=9, batch_size=16, chunk_tokens=8, learning_rate=0.0)
    bf16 = evaluate(block, token_input, dev, cfg, precision="bf16")["loss"]
    fp32 = evaluate(block, token_input, dev, cfg)["loss"]
    result = train_phase2(block, token_input, Split(stream, cache), dev, cfg, seed=0, precision="bf16")
    assert [r["dev_loss"] for r in result.history] == [bf16, bf16] and bf16 != fp32
    assert result.summary["precision"] == "bf16"


def test_one_optimizer_step_with_the_default_precision_and_head_is_the_fp32_batch_gradient():
    from newllm.phase2 import _optimizer_step

    block, token_input, stream, cache = _phase2_setup(n=30)
    pos = torch.tensor([3, 17, 0, 28, 9])
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    for p in block.parameters():
        p.grad = torch.ones_like(p)  # stale gradients are cleared first
    loss, micro = _optimizer_step(block, token_input, Split(stream, cache), pos, optimizer, 2, Phase2Config(chunk_tokens=4), None)
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    reference = F.cross_entropy(tied_logits(block(cache[pos], token_input(stream, pos)), token_input.weight), stream[pos + 1])
    reference.backward()
    assert micro == 2 and loss == pytest.approx(reference.item(), rel=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, block.parameters()))


def test_training_and_evaluation_time_are_accumulated_apart_and_carried_over_a_resume(monkeypatch, tmp_path):
    """A clock that ticks 1 s per reading: each evaluation closes a training interval of
    one tick and takes one tick itself, so 3 evaluations are 3 s of each; a run killed
    after the checkpoint of evaluation 2 resumes with the 2 s it had saved."""
    import itertools
    from types import SimpleNamespace

    import newllm.phase2 as phase2
    from newllm.checkpoint import CheckpointSpec

    ticks = itertools.count()
    monkeypatch.setattr(phase2, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    cfg = Phase2Config(max_steps=6, min_steps=0, eval_every=2, patience=9, batch_size=16, chunk_tokens=8)

    def run(spec, on_eval=None):
        block, token_input, stream, cache = _phase2_setup(n=41)
        split = Split(stream, cache)
        return train_phase2(block, token_input, split, split, cfg, seed=0, checkpoint=spec, on_eval=on_eval)

    seen = []
    whole = run(None, seen.append)
    # 40 targets in batches of 16, 16, 8 per epoch: 32, 56, 80 tokens trained after 1, 2, 3 s
    assert seen == whole.history and [r["tokens_per_s"] for r in seen] == [32.0, 28.0, 80 / 3]
    assert (whole.summary["train_seconds"], whole.summary["eval_seconds"], whole.summary["tokens_per_s"]) == (3.0, 3.0, 80 / 3)
    assert (whole.summary["tokens_processed"], whole.summary["epochs"]) == (80, 2.0)

    def kill(records):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(CheckpointSpec(tmp_path / "c.safetensors", "x", every=2, on_save=kill))
    resumed = run(CheckpointSpec(tmp_path / "c.safetensors", "x", every=2)).summary
    assert resumed["resumed_from_step"] == 4 and (resumed["train_seconds"], resumed["eval_seconds"]) == (3.0, 3.0)
    assert resumed["tokens_processed"] == 80  # the tokens before the kill are carried over


def test_a_non_finite_phase2_loss_names_the_step_and_the_last_finite_evaluation():
    cfg = Phase2Config(max_steps=6, min_steps=0, eval_every=1, patience=9, batch_size=16, chunk_tokens=8)

    def train_until_nan_after(step):
        block, token_input, stream, cache = _phase2_setup(n=41)

        def poison(record):  # the weights become NaN after this step: the next step diverges
            if record["step"] == step:
                with torch.no_grad():
                    block.layers[0].ffn[0].weight.fill_(float("nan"))

        split = Split(stream, cache)
        with pytest.raises(TrainingDivergedError) as err:
            train_phase2(block, token_input, split, split, cfg, seed=0, on_eval=poison)
        return str(err.value)

    message = train_until_nan_after(2)
    assert re.match(r"Phase 2 , step 3: non-finite loss nan; last finite values: \[\{'step': 2,", message)
    assert "'step': 1," not in message
    assert re.match(r"Phase 2 , step 2: non-finite loss nan; last finite values: \[\{'step': 1,", train_until_nan_after(1))


def test_min_delta_decides_what_counts_as_an_improvement():
    # the dev loss of a learnable stream falls, but never by 100 nats: no evaluation after
    # the first is an improvement, so the run stops after `patience` evaluations
    block, token_input, stream, cache = _phase2_setup()
    cfg = Phase2Config(
        max_steps=100, min_steps=0, eval_every=2, patience=2, batch_size=32, chunk_tokens=16, learning_rate=1e-2, min_delta=100.0
    )
    result = train_phase2(block, token_input, Split(stream, cache), Split(stream, cache), cfg, seed=0)
    assert result.history[-1]["dev_loss"] < result.history[0]["dev_loss"]
    assert result.summary["best_step"] == 2 and result.summary["steps"] == 6 and result.summary["stopped_by"] == "early_stopping"


def test_no_context_training_equals_training_on_zero_contexts():
    cfg = Phase2Config(max_steps=4, min_steps=0, eval_every=2, patience=9, batch_size=16, chunk_tokens=8, learning_rate=1e-2)
    losses = []
    for zeros in (False, True):
        block, token_input, stream, cache = _phase2_setup(n=41)
        split = Split(stream, torch.zeros_like(cache) if zeros else None)
        result = train_phase2(block, token_input, split, split, cfg, seed=0)
        losses.append([(r["train_loss"], r["dev_loss"]) for r in result.history])
    assert losses[0] == losses[1]


def test_the_default_phase2_seed_is_0():
    cfg = Phase2Config(max_steps=2, min_steps=0, eval_every=2, patience=9, batch_size=8, chunk_tokens=8, learning_rate=1e-2)
    losses = []
    for kwargs in ({}, {"seed": 0}, {"seed": 1}):
        block, token_input, stream, cache = _phase2_setup(n=41)
        split = Split(stream, cache)
        losses.append(train_phase2(block, token_input, split, split, cfg, **kwargs).history[0]["train_loss"])
    assert losses[0] == losses[1] != losses[2]


def test_accumulate_step_in_bf16_makes_the_bf16_head_itself():
    from newllm.phase2 import accumulate_step

    block, token_input, stream, cache = _phase2_setup(n=30)
    split, pos = Split(stream, cache), torch.tensor([3, 17, 0, 28, 9])
    made = accumulate_step(block, token_input, split, pos, 2, 4, "bf16")
    given = accumulate_step(block, token_input, split, pos, 2, 4, "bf16", tied_head(token_input.weight, "bf16"))
    fp32_rows = accumulate_step(block, token_input, split, pos, 2, 4, "bf16", tied_head(token_input.weight))
    assert made == given != fp32_rows


def test_a_bf16_hidden_state_gets_the_float32_loss_and_the_rounded_float32_gradient():
    # the head's matmuls cast the hidden state to bf16 anyway, so a bf16 hidden state and
    # its float32 copy give the same float32 loss; the bf16 gradient is the float32 one rounded once
    E = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    head = tied_head(E, "bf16")
    y = torch.tensor([1, 5, 7, 19, 0, 3])
    h16 = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).bfloat16().requires_grad_(True)
    h32 = h16.detach().float().requires_grad_(True)
    loss16, loss32 = TiedCrossEntropy.apply(h16, head, y, 4), TiedCrossEntropy.apply(h32, head, y, 4)
    assert loss16.dtype == torch.float32 and loss16.item() == loss32.item()
    (1.7 * loss16).backward()
    (1.7 * loss32).backward()
    assert h16.grad.dtype == torch.bfloat16 and torch.equal(h16.grad, h32.grad.bfloat16())


def test_evaluation_runs_each_target_once_in_batches_and_chunks(monkeypatch):
    import newllm.phase2 as phase2

    block, token_input, stream, cache = _phase2_setup(n=11)  # 10 targets
    batches, chunks = [], []
    forward, chunk_logits = block.forward, phase2._chunk_logits
    block.forward = lambda ctx, x: batches.append(x.shape[0]) or forward(ctx, x)
    monkeypatch.setattr(phase2, "_chunk_logits", lambda h, *rest: chunks.append(h.shape[0]) or chunk_logits(h, *rest))
    evaluate(block, token_input, Split(stream, cache), Phase2Config(eval_batch_size=4, chunk_tokens=3))
    assert batches == [4, 4, 2] and chunks == [3, 1, 3, 1, 2]


def test_sample_shifted_chunk_equals_the_max_shifted_one_with_and_without_multiplicities():
    from newllm.phase2 import SHIFT_SAMPLE_ROWS, _max_shifted_chunk, _sample_shifted_chunk

    gen = torch.Generator().manual_seed(0)
    distinct = torch.randn(600, 8, generator=gen) * 2
    merged = torch.cat([distinct[:400], distinct[:1].expand(200, 8)])  # one row 201 times
    for embeddings in (distinct, merged):
        head = tied_head(embeddings)
        assert (head.log_mult is None) == (embeddings is distinct)
        sample, sample_log_mult = head.shift_rows
        assert sample.shape[0] >= SHIFT_SAMPLE_ROWS
        h, ids = torch.randn(16, 8, generator=gen) * 3, torch.randint(0, 600, (16,), generator=gen)
        y = head.classes(ids)
        fast, exact = _sample_shifted_chunk(h, head, y), _max_shifted_chunk(h, head, y)
        assert torch.allclose(fast[0], exact[0], atol=1e-5) and torch.allclose(fast[1], exact[1], atol=1e-5)
        # and both are the float64 cross-entropy over all 600 ids
        logits = h.double() @ embeddings.double().t()
        expected = torch.logsumexp(logits, dim=1) - logits[torch.arange(16), ids]
        assert torch.allclose(fast[0].double(), expected, atol=1e-4)
    # the largest multiplicity is in the sample: ln 201 is the merged head's largest ln m
    assert torch.isclose(sample_log_mult.max(), torch.tensor(201.0).log())


def test_sample_shifted_chunk_falls_back_where_the_sample_misses_the_maximum(monkeypatch):
    # 300 long rows orthogonal to h1 = (200, 0) fill the sample (logit 0); the short row (1, 0)
    # outside it has logit 200, so exp(z - shift) overflows and that row takes the exact path
    from newllm import phase2
    from newllm.phase2 import SHIFT_SAMPLE_ROWS, _sample_shifted_chunk

    long_rows = torch.stack([torch.zeros(300), 10 + torch.arange(300.0) / 100], dim=1)
    rows = torch.cat([long_rows, torch.tensor([[1.0, 0.0]])])
    head = tied_head(rows)
    assert SHIFT_SAMPLE_ROWS < 300 and not (head.shift_rows[0][:, 0] != 0).any()  # the short row is not sampled
    h = torch.tensor([[200.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([300, 5])
    exact_rows = []
    real = phase2._max_shifted_chunk
    monkeypatch.setattr(phase2, "_max_shifted_chunk", lambda h, head, y: exact_rows.append(h) or real(h, head, y))
    nll, grad = _sample_shifted_chunk(h, head, y)
    assert len(exact_rows) == 1 and torch.equal(exact_rows[0], h[:1])  # only the overflowing row
    logits = h.double() @ rows.double().t()
    expected = torch.logsumexp(logits, dim=1) - logits[torch.arange(2), y]
    assert torch.isfinite(nll).all() and torch.allclose(nll.double(), expected, atol=1e-5)
    p = torch.softmax(logits, dim=1)
    assert torch.allclose(grad.double(), p @ rows.double() - rows.double()[y], atol=1e-5)


def test_tied_cross_entropy_chunks_rows_and_picks_the_path_by_the_rows_dtype(monkeypatch):
    # fp32 rows: ceil(B / chunk) calls of the sample-shifted chunk on consecutive row blocks,
    # never the max pass; bf16 rows: the max-shifted chunk; both equal the float64 loss
    from newllm import phase2

    gen = torch.Generator().manual_seed(1)
    E, h, y = torch.randn(50, 8, generator=gen), torch.randn(7, 8, generator=gen), torch.randint(0, 50, (7,), generator=gen)
    logits = h.double() @ E.double().t()
    expected = (torch.logsumexp(logits, dim=1) - logits[torch.arange(7), y]).mean()
    calls = {"sample": [], "max": []}
    real_sample, real_max = phase2._sample_shifted_chunk, phase2._max_shifted_chunk
    monkeypatch.setattr(phase2, "_sample_shifted_chunk", lambda h, head, y: calls["sample"].append(h) or real_sample(h, head, y))
    monkeypatch.setattr(phase2, "_max_shifted_chunk", lambda h, head, y: calls["max"].append(h) or real_max(h, head, y))
    loss = TiedCrossEntropy.apply(h, tied_head(E), y, 3)
    assert [part.shape[0] for part in calls["sample"]] == [3, 3, 1] and not calls["max"]
    assert torch.equal(torch.cat(calls["sample"]), h) and torch.isclose(loss.double(), expected, atol=1e-6)
    calls["sample"].clear()
    hidden = h.clone().requires_grad_(True)
    loss = TiedCrossEntropy.apply(hidden, tied_head(E, "bf16"), y, 4)
    loss.backward()
    assert [part.shape[0] for part in calls["max"]] == [4, 3] and not calls["sample"]
    assert torch.isclose(loss.double(), expected, rtol=2e-2)  # bf16 matmul operands: ~3 significant digits
    p = torch.softmax(logits, dim=1)
    exact_grad = (p @ E.double() - E.double()[y]) / 7
    assert hidden.grad.dtype == torch.float32 and torch.allclose(hidden.grad.double(), exact_grad, atol=5e-3)
