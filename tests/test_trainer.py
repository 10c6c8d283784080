"""The one next-token loop (newllm.trainer) that Phase 2 and the neural baselines share:
one summary schema with one meaning per key, one cadence, one annealing rule."""

import time

import pytest
import torch

from newllm.baselines.models import LSTMLM
from newllm.baselines.training import NeuralTrainConfig, StreamLM, train_neural_lm
from newllm.head import tied_head
from newllm.model import ModelConfig, TokenBlock, TokenInput, init_weights
from newllm.phase2 import CachedContexts, Phase2Config, PositionBatches, Split, train_phase2
from newllm.trainer import RECORD_KEYS, SUMMARY_KEYS, _Run, evaluation_interval

V, D_E = 40, 8


def _phase2_run(**overrides):
    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(V, D_E), 1)
    block = TokenBlock(ModelConfig(4, D_E))
    init_weights(block)
    gen = torch.Generator().manual_seed(1)
    train = Split(torch.randint(0, V, (200,), generator=gen), torch.randn(200, 1, 4, generator=gen))
    dev = Split(torch.randint(0, V, (60,), generator=gen), torch.randn(60, 1, 4, generator=gen))
    settings = dict(max_steps=6, min_steps=0, eval_every=3, patience=9, batch_size=16, chunk_tokens=8, learning_rate=1e-2)
    return train_phase2(block, token_input, train, dev, Phase2Config(**{**settings, **overrides}), seed=0)


def _lstm_run(**overrides):
    torch.manual_seed(0)
    model = LSTMLM(torch.randn(V, D_E), 8)
    gen = torch.Generator().manual_seed(1)
    train, dev = torch.randint(0, V, (400,), generator=gen), torch.randint(0, V, (60,), generator=gen)
    settings = dict(batch_size=4, seq_len=8, eval_every=3, patience=9, min_steps=0, max_steps=6, chunk_tokens=16)
    cfg = NeuralTrainConfig(**{**settings, **overrides})
    return model, train_neural_lm(model, train, dev, cfg, seed=0, stateful=True)


def test_phase2_and_a_baseline_report_the_same_keys_with_the_same_types():
    phase2, (_, lstm) = _phase2_run(), _lstm_run()
    for result in (phase2, lstm):
        assert tuple(result.summary) == SUMMARY_KEYS
        assert all(tuple(record) == RECORD_KEYS for record in result.history)
        assert [r["step"] for r in result.history] == [3, 6] and result.summary["eval_every"] == 3
    assert {k: type(v) for k, v in phase2.summary.items()} == {k: type(v) for k, v in lstm.summary.items()}
    assert {k: type(v) for k, v in phase2.history[-1].items()} == {k: type(v) for k, v in lstm.history[-1].items()}
    # the same meaning: targets per step, epochs, tokens per second of the training steps
    assert phase2.summary["tokens_processed"] == 6 * 16 and lstm.summary["tokens_processed"] == 6 * 4 * 8
    for s in (phase2.summary, lstm.summary):
        assert s["epochs"] == s["tokens_processed"] / s["train_tokens"]
        assert s["tokens_per_s"] == s["tokens_processed"] / s["train_seconds"]
        assert (s["steps"], s["evaluations"], s["stopped_by"], s["undertrained"]) == (6, 2, "max_steps", True)
    assert (phase2.summary["train_tokens"], phase2.summary["dev_tokens"]) == (199, 59)
    assert (lstm.summary["train_tokens"], lstm.summary["dev_tokens"]) == (399, 59)


@pytest.mark.parametrize("kind", ["phase2", "lstm"])
def test_train_seconds_exclude_the_dev_evaluations(monkeypatch, kind):
    """Every evaluation moves the loop's clock on by 1000 s: all of it is eval_seconds, none train_seconds."""
    from types import SimpleNamespace

    import newllm.trainer as trainer

    skipped = {"seconds": 0.0}
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + skipped["seconds"]))
    adapter = CachedContexts if kind == "phase2" else StreamLM
    real = adapter.evaluate

    def slow(self, head):
        skipped["seconds"] += 1000.0
        return real(self, head)

    monkeypatch.setattr(adapter, "evaluate", slow)
    summary = (_phase2_run() if kind == "phase2" else _lstm_run()[1]).summary
    assert summary["evaluations"] == 2
    assert 2000.0 <= summary["eval_seconds"] < 2000.0 + 60 and summary["train_seconds"] < 60


def test_the_evaluation_interval_is_eval_every_or_one_epoch_but_not_below_one_evaluations_worth():
    assert evaluation_interval(50, 4_000, 512) == 8  # ⌈4000 / 512⌉: one epoch
    assert evaluation_interval(50, 1_000_000, 512) == 50
    assert evaluation_interval(50, 100, 512) == 1  # less than one batch of data
    assert evaluation_interval(8, 4_096, 512) == 8  # an epoch of exactly 8 steps
    # never more often than training on as many targets as an evaluation scores
    assert evaluation_interval(100, 1_263, 256, dev_tokens=12_511) == 49  # ⌈12511 / 256⌉, not the 5-step epoch
    assert evaluation_interval(30, 1_263, 256, dev_tokens=12_511) == 30  # eval_every still bounds it
    assert evaluation_interval(100, 40_000, 256, dev_tokens=12_511) == 100
    # in a run: every 2 steps (one epoch of 40 targets in batches of 16 is 3 steps), and after the last
    result = _phase2_run(eval_every=5, max_steps=7, batch_size=16)
    assert result.summary["eval_every"] == 5 and [r["step"] for r in result.history] == [5, 7]
    small = _phase2_run(eval_every=50, max_steps=40, batch_size=64)  # 199 targets: 4 steps an epoch
    assert small.summary["eval_every"] == 4 and [r["step"] for r in small.history] == list(range(4, 41, 4))


def _bare_run(lr_decay=0.5, min_delta=0.1):
    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(V, D_E), 1)
    block = TokenBlock(ModelConfig(4, D_E))
    split = Split(torch.randint(0, V, (50,)), torch.randn(50, 1, 4))
    cfg = Phase2Config(learning_rate=0.8, lr_decay=lr_decay, min_delta=min_delta, patience=9, min_steps=0, chunk_tokens=8)
    model = CachedContexts(block, token_input, split, split, cfg)
    return _Run(model, PositionBatches(split.targets, 8, 0, torch.device("cpu")), tied_head(token_input.weight), cfg, "fp32")


def test_annealing_multiplies_the_rate_after_every_evaluation_that_does_not_improve_by_min_delta():
    run = _bare_run()
    rates = []
    for step, loss in ((10, 2.0), (20, 1.95), (30, 1.91), (40, 1.85), (50, 1.8)):
        run.decide({"step": step, "dev_loss": loss})
        rates.append(run.optimizer.param_groups[0]["lr"])
    # 1.95 and 1.91 do not beat 2.0 by more than 0.1 (the stop rule's test too); 1.85 does; 1.8 not 1.85
    assert rates == [0.8, 0.4, 0.2, 0.2, 0.1]
    assert (run.stopper.best_step, run.stopper.bad_evaluations) == (40, 1)
    constant = _bare_run(lr_decay=1.0)  # a factor of 1: no scheduler, the rate stays
    for step, loss in ((10, 2.0), (20, 3.0)):
        constant.decide({"step": step, "dev_loss": loss})
    assert constant.scheduler is None and constant.optimizer.param_groups[0]["lr"] == 0.8


def test_an_optimizer_step_clears_stale_gradients_and_steps_on_the_batch_gradient():
    from newllm.phase2 import accumulate_step

    run = _bare_run()
    block, split = run.model.module, run.model.train
    pos = torch.tensor([3, 17, 0, 28, 9])
    for p in block.parameters():
        p.grad = torch.ones_like(p)  # stale gradients are cleared first
    before = [p.detach().clone() for p in block.parameters()]
    loss, targets = run.step(pos, None)
    after = [p.detach().clone() for p in block.parameters()]
    with torch.no_grad():
        for p, b in zip(block.parameters(), before):
            p.copy_(b)
    block.zero_grad()
    reference = accumulate_step(block, run.model.token_input, split, pos, 5, 8)
    norm = torch.nn.utils.clip_grad_norm_(list(block.parameters()), float("inf"))
    scale = min(1.0, 1.0 / (float(norm) + 1e-6))  # clipped to grad_clip = 1
    assert targets == 5 and loss.item() == reference.item()
    for p, b, a in zip(block.parameters(), before, after):  # Adam's first step: exp_avg = (1 - β1) · clipped grad
        assert torch.allclose(run.optimizer.state[p]["exp_avg"], 0.1 * scale * p.grad, atol=1e-7)
        assert not torch.equal(a, b)


def test_lstm_micro_batches_of_lanes_after_out_of_memory_give_the_same_run():
    """A simulated out-of-memory error for more than 2 lanes: the batch is redone in parts of
    2 lanes, each reading its lanes' slice of the carried state, so the run stays the same."""
    reference_model, reference = _lstm_run(max_steps=9)
    model = LSTMLM(torch.randn(V, D_E), 8)
    forward = LSTMLM.forward

    def limited(self, tokens, state=None):
        if tokens.shape[0] > 2 and self.training:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, tokens, state)

    LSTMLM.forward = limited
    try:
        model, result = _lstm_run(max_steps=9)
    finally:
        LSTMLM.forward = forward
    assert result.summary["micro_batch_size"] == 2 and reference.summary["micro_batch_size"] == 4
    for a, b in zip(result.history, reference.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["dev_loss"] == pytest.approx(b["dev_loss"], rel=1e-5)
    for a, b in zip(model.state_dict().values(), reference_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
