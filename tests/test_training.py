"""The stop rule and config helper every trainer shares (newllm.training), traced by hand."""

import math
from dataclasses import dataclass

from newllm.training import EarlyStopping, config_from_dict


def test_a_fresh_stop_rule_has_seen_nothing():
    stopper = EarlyStopping(patience=2, min_steps=0, max_steps=10)
    assert stopper.state_dict() == {"best_loss": math.inf, "best_step": 0, "bad_evaluations": 0, "stopped_by": None}
    assert stopper.best_state is None and not stopper.undertrained


def test_improvement_must_beat_the_best_by_more_than_min_delta():
    stopper = EarlyStopping(patience=3, min_steps=0, max_steps=100, min_delta=0.1)
    states = iter(["s1", "s2", "s3", "s4"])
    trace = []
    for step, loss in ((1, 1.0), (2, 0.95), (3, 0.9), (4, 0.85)):
        stopper.update(step, loss, lambda: next(states))
        trace.append((stopper.best_step, stopper.best_loss, stopper.bad_evaluations))
    # 0.95 and 0.9 are not below 1.0 - 0.1 (strictly); 0.85 is
    assert trace == [(1, 1.0, 0), (1, 1.0, 1), (1, 1.0, 2), (4, 0.85, 0)]
    assert stopper.best_state == "s2"  # state_fn is called only on an improvement


def test_an_equal_loss_is_no_improvement_and_patience_counts_evaluations():
    stopper = EarlyStopping(patience=2, min_steps=0, max_steps=100)
    assert not stopper.update(10, 2.0) and not stopper.update(20, 2.0)
    assert (stopper.best_step, stopper.bad_evaluations) == (10, 1)
    assert stopper.update(30, 2.5) and stopper.stopped_by == "early_stopping" and not stopper.undertrained


def test_finish_without_a_stop_is_the_budget():
    stopper = EarlyStopping(patience=5, min_steps=0, max_steps=100)
    stopper.update(1, 1.0)
    assert stopper.finish(50) == "max_steps" and stopper.stopped_by == "max_steps" and stopper.undertrained
    early = EarlyStopping(patience=1, min_steps=0, max_steps=100)
    early.update(1, 1.0), early.update(2, 1.0)
    assert early.finish(2) == "early_stopping"


def test_state_dict_round_trip_resumes_the_same_decisions():
    a = EarlyStopping(patience=2, min_steps=0, max_steps=100)
    for step, loss in ((1, 3.0), (2, 2.0), (3, 2.5)):
        a.update(step, loss)
    state = a.state_dict()
    assert state == {"best_loss": 2.0, "best_step": 2, "bad_evaluations": 1, "stopped_by": None}
    b = EarlyStopping(patience=2, min_steps=0, max_steps=100)
    b.load_state_dict(state)
    assert b.state_dict() == state
    assert b.update(4, 2.1) and b.stopped_by == "early_stopping" and b.best_step == 2


def test_config_from_dict_none_means_default_and_unknown_keys_are_ignored():
    @dataclass
    class Cfg:
        lr: float = 0.1
        steps: int = 5

    assert config_from_dict(Cfg, {"lr": None, "steps": 7, "other": 1}) == Cfg(lr=0.1, steps=7)
    assert config_from_dict(Cfg, {"lr": 0.5, "steps": None}) == Cfg(lr=0.5, steps=5)


def test_resumable_batches_replays_the_pass_and_sets_the_counters():
    import pytest
    import torch

    from newllm.training import ResumableBatches

    class Draws(ResumableBatches):
        COUNTERS = ("taken",)

        def __init__(self) -> None:
            self.gen = torch.Generator().manual_seed(3)
            self._start_pass()

        def _new_pass(self) -> None:
            self.values, self.taken = torch.rand(4, generator=self.gen).tolist(), 0

        def next(self) -> float:
            if self.taken == 4:
                self._start_pass()
            self.taken += 1
            return self.values[self.taken - 1]

    draws = Draws()
    [draws.next() for _ in range(6)]  # into the second pass
    state, rng = draws.state()
    assert state == {"taken": 2}
    rest = [draws.next() for _ in range(5)]
    other = Draws()
    other.restore(state, rng)
    assert other.state()[0] == {"taken": 2} and torch.equal(other.state()[1], rng)
    assert [other.next() for _ in range(5)] == rest
    with pytest.raises(NotImplementedError):
        type("Bare", (ResumableBatches,), {"gen": torch.Generator()})()._start_pass()  # no _new_pass
