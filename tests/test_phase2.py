import math
import re

import pytest
import torch
import torch.nn.functional as F

from newllm.head import TiedCrossEntropy, tied_head
from newllm.model import ModelConfig, TokenBlock, TokenInput, init_weights, tied_logits
from newllm.phase2 import Phase2Config, Split, evaluate, train_phase2
from newllm.training import EarlyStopping, TrainingDivergedError


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


# --- expected values from the definitions ---------------------


def test_phase2_config_defaults_are_the_schema_defaults_and_chunk_tokens_per_device():
    from pathlib import Path

    from newllm.config import load_schema, section_defaults

    schema = load_schema(Path(__file__).resolve().parents[1] / "config" / "schema.yaml")
    assert Phase2Config() == Phase2Config(**section_defaults(schema, "phase2"))
    assert Phase2Config.from_dict({}).chunk_tokens == 128
    assert Phase2Config.from_dict({"chunk_tokens": None}, torch.device("cpu")).chunk_tokens == 128
    assert Phase2Config.from_dict({"chunk_tokens": None}, torch.device("cuda")).chunk_tokens == 4096
    assert Phase2Config.from_dict({"chunk_tokens": 8, "batch_size": None}, torch.device("cuda")) == Phase2Config(chunk_tokens=8)


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
    from newllm.phase2 import accumulate_step
    from newllm.trainer import interval_losses

    block, token_input, stream, cache = _phase2_setup(n=30)
    split, pos = Split(stream, cache), torch.tensor([3, 17, 0, 28, 9, 11, 4, 21, 5, 13])
    value = accumulate_step(block, token_input, split, pos, micro=10, chunk_tokens=4)
    ctx, x, y = split.batch(pos, token_input, block.num_layers, block.context_dim)
    loss = TiedCrossEntropy.apply(block(ctx, x), tied_head(token_input.weight), y, 4)
    assert value.item() == float(loss.detach())  # loss · 10 / 10 in float64 is exact; in float32 it need not be
    pending = [torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)]
    assert interval_losses(pending, 12, "Phase 2 run", None) == [2.0, 1.5]
    with pytest.raises(TrainingDivergedError, match=r"^Phase 2 run, step 12: non-finite loss nan; last finite values: x"):
        interval_losses([*pending, torch.tensor(float("nan"))][1:], 12, "Phase 2 run", "x")  # steps 11, 12


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
    from newllm.phase2 import PositionBatches

    batches = PositionBatches(5, 2, seed=7, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(7)
    first, second = torch.randperm(5, generator=gen), torch.randperm(5, generator=gen)
    drawn = [batches.next().tolist() for _ in range(3)]
    assert drawn == [first[:2].tolist(), first[2:4].tolist(), first[4:].tolist()] and batches.epoch == 1
    assert batches.next().tolist() == second[:2].tolist() and batches.state()[0] == {"epoch": 2, "offset": 2}
    state, epoch_rng = batches.state()
    rest = [batches.next().tolist() for _ in range(4)]
    again = PositionBatches(5, 2, seed=0, device=torch.device("cpu"))
    again.restore(state, epoch_rng)
    assert again.state()[0] == {"epoch": 2, "offset": 2} and torch.equal(again.state()[1], epoch_rng)
    assert [again.next().tolist() for _ in range(4)] == rest


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


def test_training_and_evaluation_time_are_accumulated_apart_and_carried_over_a_resume(monkeypatch, tmp_path):
    """A clock that ticks 1 s per reading: each evaluation closes a training interval of
    one tick and takes one tick itself, so 3 evaluations are 3 s of each; a run killed
    after the checkpoint of evaluation 2 resumes with the 2 s it had saved."""
    import itertools
    from types import SimpleNamespace

    import newllm.trainer as trainer
    from newllm.checkpoint import CheckpointSpec

    ticks = itertools.count()
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
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


def test_evaluation_runs_each_target_once_in_batches_and_chunks(monkeypatch):
    import newllm.head as head

    block, token_input, stream, cache = _phase2_setup(n=11)  # 10 targets
    batches, chunks = [], []
    forward, chunk_logits = block.forward, head._chunk_logits
    block.forward = lambda ctx, x: batches.append(x.shape[0]) or forward(ctx, x)
    monkeypatch.setattr(head, "_chunk_logits", lambda h, *rest: chunks.append(h.shape[0]) or chunk_logits(h, *rest))
    evaluate(block, token_input, Split(stream, cache), Phase2Config(eval_batch_size=4, chunk_tokens=3))
    assert batches == [4, 4, 2] and chunks == [3, 1, 3, 1, 2]
