"""Pieces every trainer shares: stop rules, the training error, the run result.

A stop rule is a small object with ``update(...) -> stop?`` that keeps the best state it
has seen (nanoGPT's loop, with the decision named).  Trainers call it once per
evaluation; what it decided and why is part of every run's summary, so a run that hit a
budget instead of its criterion is flagged ``undertrained`` (never silently reported as
converged).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch


class TrainingDivergedError(FloatingPointError):
    """A loss became NaN/Inf; the message names phase, run, step and the last finite values."""


def check_finite(value: float, what: str, last_finite: Any) -> None:
    """Raise :class:`TrainingDivergedError` naming ``what`` when ``value`` is NaN/Inf."""
    if not math.isfinite(value):
        raise TrainingDivergedError(f"{what}: non-finite loss {value}; last finite values: {last_finite}")


def config_from_dict(cls: type, cfg: dict[str, Any]) -> Any:
    """A trainer config dataclass from a resolved config section: keys the dataclass does
    not know are ignored, ``None`` means the dataclass default (one rule for every phase)."""
    known = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in cfg.items() if k in known and v is not None})


class ResumableBatches:
    """Base of the seeded batch samplers (Phase 2's shuffled positions, the baselines'
    truncated-BPTT windows), resumable bit for bit.

    Every pass over the data (an epoch) starts by saving the generator's state, so a
    checkpoint of ``(counters, pass_rng)`` restores the exact stream of batches: replay
    the pass's start from ``pass_rng``, then set the counters.  A subclass sets ``gen``
    (a ``torch.Generator``) and ``COUNTERS`` (the attributes that locate the next batch
    within a pass), implements ``_new_pass`` and calls ``_start_pass`` to begin one.
    """

    COUNTERS: tuple[str, ...] = ()
    gen: "torch.Generator"
    pass_rng: "torch.Tensor"

    def _start_pass(self) -> None:
        self.pass_rng = self.gen.get_state()  # what restore() replays
        self._new_pass()

    def _new_pass(self) -> None:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, Any], "torch.Tensor"]:
        """``({counter: value}, generator state at the start of this pass)`` for a checkpoint."""
        return {name: getattr(self, name) for name in self.COUNTERS}, self.pass_rng

    def restore(self, state: dict[str, Any], rng: "torch.Tensor") -> None:
        """Undo :meth:`state`: replay the pass's start from ``rng``, then set the counters."""
        self.gen.set_state(rng)
        self._start_pass()
        for name in self.COUNTERS:
            setattr(self, name, state[name])


class EarlyStopping:
    """Early stopping on a dev loss measured in optimizer steps (docs/method.md §7).

    ``update`` is called after each evaluation.  The rule stops when the loss has not
    improved (by more than ``min_delta`` nats) for ``patience`` evaluations, but never
    before ``min_steps``; it always stops at ``max_steps``.  It keeps a copy of the best
    state (``state_fn()`` is called only on an improvement).

    Args:
        patience: evaluations without improvement before stopping (≥ 1).
        min_steps: optimizer steps before which no early stop happens.
        max_steps: the budget; reaching it stops with ``stopped_by = "max_steps"``.
        min_delta: improvement (nats) that counts.

    Raises:
        ValueError: ``patience < 1`` or ``max_steps < min_steps``.
    """

    def __init__(self, patience: int, min_steps: int, max_steps: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if max_steps < min_steps:
            raise ValueError(f"max_steps ({max_steps}) must be >= min_steps ({min_steps})")
        self.patience, self.min_steps, self.max_steps, self.min_delta = patience, min_steps, max_steps, min_delta
        self.best_loss = math.inf
        self.best_step = 0
        self.best_state: Any = None
        self.bad_evaluations = 0
        self.stopped_by: str | None = None

    def update(self, step: int, loss: float, state_fn: Callable[[], Any] | None = None) -> bool:
        """Record the dev ``loss`` after ``step`` optimizer steps; return whether to stop."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad_evaluations = loss, step, 0
            if state_fn is not None:
                self.best_state = copy.deepcopy(state_fn())
        else:
            self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience and step >= self.min_steps:
            self.stopped_by = "early_stopping"
        elif step >= self.max_steps:
            self.stopped_by = "max_steps"
        return self.stopped_by is not None

    def finish(self, step: int) -> str:
        """The reason training ended at ``step`` (``max_steps`` if the loop ran out first)."""
        if self.stopped_by is None:
            self.stopped_by = "max_steps"
        return self.stopped_by

    @property
    def undertrained(self) -> bool:
        """True when the run ended on its budget, not on its criterion."""
        return self.stopped_by == "max_steps"

    def state_dict(self) -> dict[str, Any]:
        """Counters for a checkpoint (the best state is saved separately as tensors)."""
        return {k: getattr(self, k) for k in ("best_loss", "best_step", "bad_evaluations", "stopped_by")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    """What every trainer returns: per-evaluation history, a summary and the final state."""

    history: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
