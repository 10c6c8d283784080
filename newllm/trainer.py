"""One next-token training loop for every model with the frozen tied head.

Phase 2's TokenBlock on cached contexts (docs/method.md §7) and the neural baselines
(LSTM, Transformer, …; §10) are trained by the same algorithm, written once here as a
flat loop in nanoGPT's order:

    next batch → forward (the model's hidden states) → tied cross-entropy (the head is
    applied here, :class:`newllm.head.TiedCrossEntropy`) → backward → clip → Adam step →
    at an evaluation step: the interval's losses (one host sync; NaN/Inf raises, naming
    the step) → dev evaluation → stop rule → plateau annealing → checkpoint.

A model plugs in through :class:`NextTokenModel` (a batch to hidden states ``[rows, T, d_e]``
and targets ``[rows, T]``, ``T = 1`` for Phase 2) and a resumable batch source
(:class:`newllm.training.ResumableBatches`).  What is the same for every model:

- **Evaluation cadence** (:func:`evaluation_interval`): the dev stream is evaluated
  every ``k = min(eval_every, steps per epoch)`` optimizer steps (at least 1) and after
  the last step; there is no evaluation at step 0.  A training set smaller than
  ``eval_every`` batches is evaluated once per epoch, because a small training set
  overfits within a few dozen steps, long before a fixed step interval.
- **Stop rule**: :class:`newllm.training.EarlyStopping` on the dev loss (``patience``
  evaluations without an improvement of more than ``min_delta`` nats, never before
  ``min_steps``, always at ``max_steps``, which flags the run ``undertrained``); the best
  evaluation's weights are restored at the end.
- **Annealing**: every evaluation without such an improvement multiplies the learning
  rate by ``lr_decay`` — ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min",
  factor=lr_decay, patience=0, threshold=min_delta, threshold_mode="abs", eps=0)``, the
  same test of improvement as the stop rule (``loss < best − min_delta``).  ``lr_decay = 1``
  (constant rate) runs without a scheduler: torch refuses a factor of 1.
- **Out of memory**: a batch that does not fit is redone in micro-batches of half the
  rows with gradient accumulation (the same optimizer step), halving until it fits.
- **History and summary**: one schema (:data:`RECORD_KEYS`, :data:`SUMMARY_KEYS`), one
  meaning per key for every model; in particular ``train_seconds`` is the wall time of
  the optimizer steps alone (dev evaluations and checkpoint writes excluded) and
  ``eval_seconds`` that of the dev evaluations.
- **Checkpoint/resume** (:class:`newllm.checkpoint.TrainState`): weights, Adam, the
  scheduler, the stop rule and its best weights, the history, the counters, the batch
  source's position, torch's RNG and any state the model carries, so a killed run
  resumes to identical numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from newllm.checkpoint import CheckpointSpec, TrainState
from newllm.head import TiedCrossEntropy, TiedHead
from newllm.metrics import perplexity
from newllm.runtime import autocast
from newllm.training import EarlyStopping, TrainResult, check_finite

RECORD_KEYS = (
    "step",
    "epoch",
    "tokens",
    "train_loss",
    "train_ppl",
    "dev_loss",
    "dev_ppl",
    "dev_accuracy",
    "learning_rate",
    "train_seconds",
    "eval_seconds",
    "tokens_per_s",
)
"""One history record per dev evaluation: after ``step`` optimizer steps, ``tokens``
targets trained on (``epoch`` = tokens / train_tokens); ``train_loss``/``train_ppl``: the
mean training loss (nats) of the steps since the previous evaluation; the dev loss
(nats), perplexity and tie-aware top-1 accuracy (:func:`newllm.head.top1_credit`);
``learning_rate``: the rate those steps ran at; ``train_seconds``/``eval_seconds``:
cumulative; ``tokens_per_s``: tokens / train_seconds."""

SUMMARY_KEYS = (
    "steps",
    "epochs",
    "tokens_processed",
    "best_step",
    "stopped_by",
    "undertrained",
    "resumed_from_step",
    "evaluations",
    "eval_every",
    "batch_size",
    "micro_batch_size",
    "train_tokens",
    "dev_tokens",
    "dev_loss",
    "dev_ppl",
    "dev_accuracy",
    "train_loss",
    "train_ppl",
    "final_learning_rate",
    "train_seconds",
    "eval_seconds",
    "tokens_per_s",
    "precision",
)
"""Every trainer's summary (:func:`train_next_token`), the same meaning for every model:
``steps`` optimizer steps run; ``epochs`` = ``tokens_processed`` / ``train_tokens``;
``tokens_processed`` next-token targets in those steps; ``best_step`` the evaluation whose
weights are kept (its ``dev_*`` and ``train_*`` values are reported); ``stopped_by``
``early_stopping`` | ``max_steps``; ``undertrained`` = stopped by ``max_steps``;
``resumed_from_step`` the checkpoint's step (``None``: not resumed); ``evaluations`` dev
evaluations run; ``eval_every`` the interval used (:func:`evaluation_interval`);
``batch_size`` rows per optimizer step (Phase 2 positions, baseline windows) and
``micro_batch_size`` rows per forward at the end (smaller after out-of-memory);
``train_tokens``/``dev_tokens`` next-token targets of the streams; ``final_learning_rate``
after the last annealing; ``train_seconds`` optimizer-step wall time (no evaluations,
no checkpoint writes), ``eval_seconds`` dev-evaluation wall time, ``tokens_per_s`` =
tokens_processed / train_seconds; ``precision`` ``fp32`` | ``bf16``."""


class NextTokenModel(Protocol):
    """A model the loop trains: ``module`` holds the trained weights (its ``state_dict`` is
    checkpointed and kept at the best evaluation); ``train_tokens`` and ``dev_tokens`` are
    the next-token targets of its streams."""

    module: nn.Module
    train_tokens: int
    dev_tokens: int

    def split(self, batch: Any, micro: int) -> list[tuple[Any, int]]:
        """``batch`` in micro-batches of at most ``micro`` rows: ``[(part, rows), …]``."""

    def load(self, part: Any) -> tuple[Any, Tensor]:
        """``(inputs, targets [rows, T])`` of one part (outside autocast)."""

    def hidden(self, inputs: Any) -> Tensor:
        """The hidden states ``[rows, T, d_e]`` that meet the tied head (under autocast)."""

    def evaluate(self, head: TiedHead) -> dict[str, Any]:
        """The dev stream's ``loss`` (nats), ``ppl`` and ``accuracy``."""

    def carry_tensors(self) -> dict[str, Tensor]:
        """State carried between batches (e.g. an LSTM's), for a checkpoint."""

    def restore_carry(self, tensors: dict[str, Tensor]) -> None:
        """Undo :meth:`carry_tensors` (given every tensor of the checkpoint)."""


@dataclass
class LoopConfig:
    """The loop's settings; :meth:`of` reads them from ``Phase2Config`` or
    ``NeuralTrainConfig``, which share these field names."""

    learning_rate: float
    lr_decay: float
    grad_clip: float
    eval_every: int
    patience: int
    min_delta: float
    min_steps: int
    max_steps: int
    chunk_tokens: int

    @classmethod
    def of(cls, cfg: Any) -> "LoopConfig":
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


@dataclass
class Counters:
    """What the loop counts, checkpointed as is."""

    step: int = 0
    tokens: int = 0
    micro: int = 1
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def evaluation_interval(eval_every: int, train_tokens: int, targets_per_batch: int, dev_tokens: int = 0) -> int:
    """Optimizer steps between dev evaluations, for every model (docs/method.md §7):
    ``eval_every``, or one epoch (``⌈train_tokens / targets_per_batch⌉`` steps) when that
    is fewer — small training sets overfit within a few dozen steps — but never fewer
    steps than train on as many targets as one evaluation scores
    (``⌈dev_tokens / targets_per_batch⌉``), so evaluating costs at most about as much as
    training; at least 1.  The loop also evaluates after its last step."""
    epoch = math.ceil(train_tokens / targets_per_batch)
    dev = math.ceil(dev_tokens / targets_per_batch)
    return max(1, min(eval_every, max(epoch, dev)))


def accumulate(
    model: NextTokenModel, batch: Any, micro: int, head: TiedHead, chunk_tokens: int, precision: str = "fp32"
) -> tuple[Tensor, int]:
    """Forward + backward of one batch in micro-batches of ``micro`` rows with gradient
    accumulation: the gradient equals that of the whole batch (each part's mean loss
    weighted by its share of rows, every row holding the same number of targets).

    Returns:
        ``(loss, targets)``: the batch's mean loss (nats) as a 0-dim float64 tensor
        (float32 on ``mps``) on the device, not read to the host, and the number of targets.
    """
    device = head.rows.device
    total = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    parts = model.split(batch, micro)
    rows, targets = sum(r for _, r in parts), 0
    for part, r in parts:
        inputs, y = model.load(part)
        with autocast(device, precision):
            hidden = model.hidden(inputs)  # [r, T, d_e]
        loss = TiedCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), head, y.reshape(-1), chunk_tokens)
        (loss * (r / rows)).backward()
        total += loss.detach().to(total.dtype) * r
        targets += y.numel()
    return total / rows, targets


def interval_losses(pending: list[Tensor], step: int, run_name: str, last_finite: Any) -> list[float]:
    """The losses (nats) of the steps ``step - len(pending) + 1 … step``, read from the
    device with one host sync.

    Raises:
        TrainingDivergedError: naming the first step whose loss is NaN/Inf (the steps after
            it ran on diverged weights and are discarded with the run).
    """
    values = torch.stack(pending).tolist()
    for offset, value in enumerate(values):
        check_finite(value, f"{run_name}, step {step - len(values) + 1 + offset}", last_finite)
    return values


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class _Run:
    """One run between its steps: model, batches, head, optimizer, scheduler, stop rule,
    history (in :class:`TrainState`) and :class:`Counters`."""

    def __init__(self, model: NextTokenModel, batches: Any, head: TiedHead, cfg: LoopConfig, precision: str) -> None:
        self.model, self.batches, self.head, self.cfg, self.precision = model, batches, head, cfg, precision
        self.device = head.rows.device
        self.params = [p for p in model.module.parameters() if p.requires_grad]
        fused = True if self.device.type == "cuda" else None  # CUDA: one kernel, same update rule
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.learning_rate, fused=fused)
        self.scheduler = None  # lr_decay = 1: constant rate (ReduceLROnPlateau needs a factor < 1)
        if cfg.lr_decay < 1:
            plateau = {"mode": "min", "patience": 0, "threshold_mode": "abs", "eps": 0.0}
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=cfg.lr_decay, threshold=cfg.min_delta, **plateau
            )
        self.stopper = EarlyStopping(cfg.patience, cfg.min_steps, cfg.max_steps, cfg.min_delta)
        self.state = TrainState(model.module, self.optimizer, self.stopper)
        self.n = Counters(micro=batches.batch_size)
        self.resumed_from_step: int | None = None

    def step(self, batch: Any, on_oom: Callable[[int], None] | None) -> tuple[Tensor, int]:
        """zero_grad → forward/backward (halving the micro-batch on out-of-memory) → clip → step."""
        while True:
            self.optimizer.zero_grad(set_to_none=True)
            try:
                loss, targets = accumulate(self.model, batch, self.n.micro, self.head, self.cfg.chunk_tokens, self.precision)
                break
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not _is_oom(err) or self.n.micro <= 1:
                    raise
                self.n.micro = max(1, self.n.micro // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if on_oom is not None:
                    on_oom(self.n.micro)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        return loss, targets

    def evaluate(self, losses: list[float], run_name: str) -> dict[str, Any]:
        """One history record (:data:`RECORD_KEYS`): the dev evaluation, timed into ``eval_seconds``."""
        n, t0 = self.n, time.perf_counter()
        dev = self.model.evaluate(self.head)
        self.model.module.train()
        n.eval_seconds += time.perf_counter() - t0
        check_finite(dev["loss"], f"{run_name}, dev loss at step {n.step}", self.state.history[-1:] or None)
        train_loss = sum(losses) / len(losses)
        return {
            "step": n.step,
            "epoch": n.tokens / self.model.train_tokens,
            "tokens": n.tokens,
            "train_loss": train_loss,
            "train_ppl": perplexity(train_loss),
            "dev_loss": dev["loss"],
            "dev_ppl": dev["ppl"],
            "dev_accuracy": dev["accuracy"],
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "train_seconds": n.train_seconds,
            "eval_seconds": n.eval_seconds,
            "tokens_per_s": n.tokens / max(n.train_seconds, 1e-9),
        }

    def decide(self, record: dict[str, Any]) -> None:
        """Stop rule (keeps the best weights), then annealing on plateau."""
        self.stopper.update(record["step"], record["dev_loss"], self.model.module.state_dict)
        if self.scheduler is not None:
            self.scheduler.step(record["dev_loss"])

    def end_interval(
        self,
        pending: list[Tensor],
        t0: float,
        run_name: str,
        on_eval: Callable[[dict[str, Any]], None] | None,
        checkpoint: CheckpointSpec | None,
    ) -> None:
        """Close an evaluation interval: read its training losses (one host sync, so
        ``train_seconds`` since ``t0`` includes the device's work), evaluate on dev, record,
        decide the stop and learning rate, and checkpoint every ``checkpoint.every``
        evaluations while the run goes on."""
        history = self.state.history
        losses = interval_losses(pending, self.n.step, run_name, history[-1:] or None)
        self.n.train_seconds += time.perf_counter() - t0
        record = self.evaluate(losses, run_name)
        history.append(record)
        if on_eval is not None:
            on_eval(record)
        self.decide(record)
        if checkpoint and self.stopper.stopped_by is None and len(history) % checkpoint.every == 0:
            self.save(checkpoint)

    def save(self, spec: CheckpointSpec) -> None:
        batch_state, batch_rng = self.batches.state()
        scheduler = None if self.scheduler is None else self.scheduler.state_dict()
        counters = {**asdict(self.n), "batches": batch_state, "scheduler": scheduler}
        extra = {"batch_rng": batch_rng, "torch_rng": torch.get_rng_state(), **self.model.carry_tensors()}
        if self.device.type == "cuda":
            extra["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        self.state.save(spec, counters, extra)

    def resume(self, spec: CheckpointSpec | None) -> None:
        counters = self.state.load(spec)
        if not counters:
            return
        tensors = self.state.extra_tensors
        self.n = Counters(**{k: counters[k] for k in Counters.__dataclass_fields__})
        self.resumed_from_step = self.n.step
        self.batches.restore(counters["batches"], tensors["batch_rng"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(counters["scheduler"])
        torch.set_rng_state(tensors["torch_rng"])
        if "cuda_rng" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.model.restore_carry(tensors)

    def summary(self, every: int) -> dict[str, Any]:
        """:data:`SUMMARY_KEYS` from the best evaluation."""
        n, stopper, history = self.n, self.stopper, self.state.history
        best = next(r for r in history if r["step"] == stopper.best_step)
        return {
            "steps": n.step,
            "epochs": n.tokens / self.model.train_tokens,
            "tokens_processed": n.tokens,
            "best_step": stopper.best_step,
            "stopped_by": stopper.stopped_by,
            "undertrained": stopper.undertrained,
            "resumed_from_step": self.resumed_from_step,
            "evaluations": len(history),
            "eval_every": every,
            "batch_size": self.batches.batch_size,
            "micro_batch_size": n.micro,
            "train_tokens": self.model.train_tokens,
            "dev_tokens": self.model.dev_tokens,
            **{k: best[k] for k in ("dev_loss", "dev_ppl", "dev_accuracy", "train_loss", "train_ppl")},
            "final_learning_rate": self.optimizer.param_groups[0]["lr"],
            "train_seconds": n.train_seconds,
            "eval_seconds": n.eval_seconds,
            "tokens_per_s": n.tokens / max(n.train_seconds, 1e-9),
            "precision": self.precision,
        }


def train_next_token(
    model: NextTokenModel,
    batches: Any,
    head: TiedHead,
    cfg: Any,
    *,
    precision: str = "fp32",
    run_name: str = "",
    on_batch: Callable[[int], None] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    on_oom: Callable[[int], None] | None = None,
    checkpoint: CheckpointSpec | None = None,
) -> TrainResult:
    """Train ``model`` on ``batches`` to its best dev loss (module docstring: the loop and
    what it does the same for every model).

    Args:
        model: a :class:`NextTokenModel`.
        batches: the batch source: ``next()``, ``state()``/``restore()``, ``batch_size``
            (rows) and ``targets_per_batch``.
        head: the frozen tied head (:func:`newllm.head.tied_head`, made once per run).
        cfg: the :class:`LoopConfig` fields (a ``Phase2Config`` or ``NeuralTrainConfig``).
        precision: ``fp32`` | ``bf16``: ``bf16`` runs ``model.hidden`` under autocast and
            the head's matmuls in the head rows' dtype; losses, weights and Adam float32.
        run_name: names the run in a divergence error.
        on_batch: called with each step's number of targets (progress).
        on_eval: called with each history record.
        on_oom: called with each new micro-batch size after an out-of-memory error.
        checkpoint: save after every ``checkpoint.every`` evaluations (never at the stop)
            and resume from a matching checkpoint; ``None``: off.

    Returns:
        :class:`TrainResult` with ``history`` (:data:`RECORD_KEYS`) and ``summary``
        (:data:`SUMMARY_KEYS`); ``model.module`` holds the best evaluation's weights.

    Raises:
        TrainingDivergedError: a NaN/Inf training or dev loss, naming its step.
    """
    cfg = LoopConfig.of(cfg)
    run = _Run(model, batches, head, cfg, precision)
    run.resume(checkpoint)
    n = run.n
    every = evaluation_interval(cfg.eval_every, model.train_tokens, batches.targets_per_batch, model.dev_tokens)
    pending: list[Tensor] = []  # the steps' losses since the last evaluation, on the device
    model.module.train()
    t0 = time.perf_counter()
    while run.stopper.stopped_by is None:
        loss, targets = run.step(batches.next(), on_oom)
        n.step, n.tokens = n.step + 1, n.tokens + targets
        pending.append(loss)
        if on_batch is not None:
            on_batch(targets)
        if n.step % every and n.step < cfg.max_steps:
            continue
        run.end_interval(pending, t0, run_name, on_eval, checkpoint)
        pending, t0 = [], time.perf_counter()
    model.module.load_state_dict(run.stopper.best_state)
    return TrainResult(history=run.state.history, summary=run.summary(every))
