"""One trainer for the neural baselines (LSTM, Transformer): Adam, clipping, early stopping.

The loop reads as nanoGPT's, with the stop rule as an object
(:class:`newllm.training.EarlyStopping`): get batch -> forward -> tied cross-entropy ->
backward -> clip -> step -> every ``eval_every`` steps evaluate the dev stream and ask
the stop rule (an improvement counts when the dev loss drops by more than ``min_delta``
nats).  Every evaluation that does not improve the dev loss also multiplies the
learning rate by ``lr_decay`` (annealing on plateau, so the ``patience`` evaluations
before a stop are spent at ever smaller steps instead of bouncing around the optimum;
``lr_decay = 1`` keeps it constant).  The best dev weights are restored before the test
evaluation.  The dev loss at step 0 (the initialisation) is the first evaluation, so a
model that never improves keeps its initial weights rather than a worse later state.

Batches (deterministic per seed through one ``torch.Generator``):

- LSTM, truncated BPTT: the training stream is cut into ``batch_size`` contiguous lanes;
  step ``i`` feeds the next ``seq_len`` tokens of every lane and carries the LSTM state
  from the previous window (detached: gradients stop at window boundaries).  After a
  full pass the state is reset and the next pass starts at a random offset in
  ``[0, seq_len)`` so window boundaries move between passes.
- Transformer: ``batch_size`` windows of ``seq_len`` (= block_size) tokens at uniformly
  random offsets (nanoGPT's ``get_batch``), no state.

Either way one optimizer step processes ``batch_size × seq_len`` targets, every one of
them with a loss term.  The dev stream is evaluated every ``eval_every`` steps or once
per epoch of the training stream, whichever is more often: a 4k-token training set
overfits within a few dozen 512-token steps, long before a fixed step interval.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from newllm.checkpoint import CheckpointSpec, TrainState
from newllm.metrics import perplexity
from newllm.phase2 import TiedCrossEntropy, TiedHead, tied_head, tied_token_nll
from newllm.runtime import autocast
from newllm.training import EarlyStopping, ResumableBatches, TrainResult, check_finite, config_from_dict


@dataclass
class NeuralTrainConfig:
    """Hyper-parameters of one neural baseline run (config ``baselines.<model>`` plus
    ``baselines.early_stopping``; the defaults here are the schema's LSTM defaults)."""

    learning_rate: float = 1e-2
    lr_decay: float = 0.5
    grad_clip: float = 1.0
    batch_size: int = 16
    seq_len: int = 32
    eval_every: int = 50
    patience: int = 3
    min_delta: float = 0.002
    min_steps: int = 100
    max_steps: int = 2000
    chunk_tokens: int | None = None
    """Rows per fused tied cross-entropy chunk; ``None``: per device (:meth:`from_dict`)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "eval_every", "max_steps", "chunk_tokens"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0 nats, got {self.min_delta}")
        if self.learning_rate <= 0 or self.grad_clip <= 0:
            raise ValueError(f"learning_rate and grad_clip must be > 0, got {self.learning_rate} and {self.grad_clip}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1] (1 = constant learning rate), got {self.lr_decay}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], device: torch.device | None = None) -> "NeuralTrainConfig":
        """From a resolved ``baselines`` section (unknown keys ignored, ``None`` = default);
        ``chunk_tokens: null`` becomes 4096 rows on CUDA, 32 on the CPU."""
        out = config_from_dict(cls, cfg)
        if out.chunk_tokens is None:
            out.chunk_tokens = 4096 if device is not None and device.type == "cuda" else 32
        return out


class BPTTBatches(ResumableBatches):
    """Consecutive ``[B, seq_len]`` windows of ``B`` parallel lanes of one stream (truncated BPTT).

    ``B`` is ``batch_size``, or fewer when the stream is too short for that many lanes of
    at least ``seq_len`` tokens (``self.batch_size`` holds the number used).  ``next()``
    returns ``(inputs, targets, reset)``; ``reset`` is True at the first window of a
    pass (the caller drops the carried state).

    Resumable (:class:`newllm.training.ResumableBatches`): the generator's state at the
    start of each pass (which draws the pass's random offset) and ``(position, fresh)``.

    Raises:
        ValueError: the stream is too short for even one lane of ``seq_len`` tokens.
    """

    COUNTERS = ("position", "fresh")

    def __init__(self, stream: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> None:
        lanes = min(batch_size, (stream.shape[0] - seq_len) // seq_len)  # every lane >= seq_len after any pass offset
        if lanes < 1:
            raise ValueError(
                f"training stream of {stream.shape[0]} tokens is too short for one truncated-BPTT lane of bptt={seq_len} "
                f"tokens (needs {2 * seq_len}); lower baselines.lstm.bptt"
            )
        self.stream, self.batch_size, self.seq_len, self.gen = stream, lanes, seq_len, generator
        self._start_pass()

    def _new_pass(self) -> None:
        offset = int(torch.randint(self.seq_len, (1,), generator=self.gen))
        usable = (self.stream.shape[0] - 1 - offset) // self.batch_size
        self.lanes = self.stream[offset : offset + usable * self.batch_size + 1]
        self.usable = usable
        self.position = 0
        self.fresh = True

    def next(self) -> tuple[Tensor, Tensor, bool]:
        if self.position + self.seq_len > self.usable:
            self._start_pass()
        idx = torch.arange(self.batch_size, device=self.stream.device)[:, None] * self.usable
        cols = torch.arange(self.position, self.position + self.seq_len, device=self.stream.device)[None, :]
        inputs, targets = self.lanes[idx + cols], self.lanes[idx + cols + 1]  # [B, T] each
        self.position += self.seq_len
        reset, self.fresh = self.fresh, False
        return inputs, targets, reset


class RandomWindows:
    """``B`` windows of ``seq_len`` tokens at random offsets (nanoGPT ``get_batch``).

    Raises:
        ValueError: the stream is shorter than one window plus its target.
    """

    def __init__(self, stream: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> None:
        if stream.shape[0] < seq_len + 1:
            raise ValueError(f"training stream of {stream.shape[0]} tokens is shorter than block_size+1 = {seq_len + 1}")
        self.stream, self.batch_size, self.seq_len, self.gen = stream, batch_size, seq_len, generator

    def next(self) -> tuple[Tensor, Tensor, bool]:
        starts = torch.randint(self.stream.shape[0] - self.seq_len, (self.batch_size,), generator=self.gen).to(self.stream.device)
        idx = starts[:, None] + torch.arange(self.seq_len, device=self.stream.device)[None, :]
        return self.stream[idx], self.stream[idx + 1], True

    def state(self) -> tuple[dict[str, Any], Tensor]:
        """``({}, generator state)`` for a checkpoint."""
        return {}, self.gen.get_state()

    def restore(self, state: dict[str, Any], rng: Tensor) -> None:
        """Undo :meth:`state`."""
        self.gen.set_state(rng)


def evaluate_stream(
    model: nn.Module, stream: Tensor, chunk_tokens: int, precision: str = "fp32", head: TiedHead | None = None
) -> dict[str, Any]:
    """Score every target of ``stream`` (``[n]`` int64) with the model's own stream pass.

    ``bf16``: the stream pass under ``torch.autocast`` and the head's matmuls on ``head``
    (:func:`newllm.phase2.tied_head` of the model's embeddings; made here when ``None``),
    log-sum-exp and NLL in float32.

    Returns:
        ``{"loss", "ppl", "accuracy", "tokens", "token_nll"}``: mean NLL (nats per
        target), ``exp(loss)``, top-1 accuracy, ``n-1``, and the ``[n-1]`` float32 numpy
        vector of per-target NLL whose mean is ``loss``.
    """
    was_training = model.training
    model.eval()
    head = tied_head(model.embeddings, precision) if head is None else head
    with autocast(stream.device, precision):
        hidden = model.stream_hidden(stream)  # [n-1, d_e]
    nll, correct = tied_token_nll(hidden, head, stream[1:], chunk_tokens)
    model.train(was_training)
    vector = nll.double().cpu().numpy()
    loss = float(vector.mean())
    return {
        "loss": loss,
        "ppl": perplexity(loss),
        "accuracy": float(correct.float().mean()),
        "tokens": int(vector.size),
        "token_nll": vector.astype(np.float32),
    }


def _detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state)


class NeuralTrainer:
    """One baseline run between its steps: its batch source (:class:`BPTTBatches` or
    :class:`RandomWindows`), optimizer, stop rule, history and timings
    (:func:`train_neural_lm` is the loop over :meth:`train_step` and :meth:`evaluate`)."""

    def __init__(
        self,
        model: nn.Module,
        batches: BPTTBatches | RandomWindows,
        cfg: NeuralTrainConfig,
        run_name: str = "",
        on_eval: Callable[[dict[str, Any]], None] | None = None,
        precision: str = "fp32",
    ) -> None:
        if cfg.chunk_tokens is None:
            raise ValueError("NeuralTrainConfig.chunk_tokens is None: resolve it with NeuralTrainConfig.from_dict(cfg, device)")
        self.model, self.batches, self.cfg, self.run_name, self.on_eval = model, batches, cfg, run_name, on_eval
        self.precision = precision
        self.head = tied_head(model.embeddings, precision)  # once per run: identical rows merged, bf16 rows for bf16
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.learning_rate)
        self.stopper = EarlyStopping(cfg.patience, cfg.min_steps, cfg.max_steps, cfg.min_delta)
        self.tokens_per_step = self.batches.batch_size * cfg.seq_len
        # at least one evaluation per epoch: small training sets overfit within eval_every steps
        self.eval_every = max(1, min(cfg.eval_every, math.ceil((batches.stream.shape[0] - 1) / self.tokens_per_step)))
        self.history: list[dict[str, Any]] = []
        self.state, self.last_finite = None, None  # carried LSTM state, last finite training loss
        self.t_start = time.perf_counter()
        self.eval_seconds, self.step_seconds = 0.0, 0.0
        self.resumed_from_step: int | None = None

    def save(self, spec: CheckpointSpec, step: int) -> None:
        """Checkpoint after the evaluation at ``step``: weights, Adam, stop rule and best
        weights, history, batch stream position, carried LSTM state, torch's RNG."""
        state = TrainState(self.model, self.optimizer, self.stopper)
        state.history = self.history
        batch_state, batch_rng = self.batches.state()
        extra = {"batch_rng": batch_rng, "torch_rng": torch.get_rng_state()}
        if self.state is not None:
            extra.update({f"carry.{i}": t for i, t in enumerate(_detach(self.state))})
        counters = {
            "step": step,
            "batches": batch_state,
            "carry": 0 if self.state is None else len(self.state),
            "last_finite": self.last_finite,
            "seconds": time.perf_counter() - self.t_start,
            "eval_seconds": self.eval_seconds,
            "step_seconds": self.step_seconds,
        }
        state.save(spec, counters, extra)

    def resume(self, spec: CheckpointSpec | None) -> int:
        """Restore from a matching checkpoint; returns the step it was saved after (0: none)."""
        state = TrainState(self.model, self.optimizer, self.stopper)
        counters = state.load(spec)
        if not counters:
            return 0
        device = next(self.model.parameters()).device
        self.history = state.history
        self.batches.restore(counters["batches"], state.extra_tensors["batch_rng"])
        torch.set_rng_state(state.extra_tensors["torch_rng"])
        carry = [state.extra_tensors[f"carry.{i}"].to(device) for i in range(counters["carry"])]
        self.state = tuple(carry) if carry else None
        self.last_finite = counters["last_finite"]
        self.t_start = time.perf_counter() - counters["seconds"]
        self.eval_seconds, self.step_seconds = counters["eval_seconds"], counters["step_seconds"]
        self.resumed_from_step = counters["step"]
        return counters["step"]

    def snapshot(self) -> dict[str, Tensor]:
        """A copy of the weights (the stop rule keeps the best)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def train_step(self, step: int) -> float:
        """Get batch → forward → tied cross-entropy → finite check → backward → clip → step.

        Returns:
            the batch's training loss (nats per target).

        Raises:
            TrainingDivergedError: a NaN/Inf loss, before it reaches the weights.
        """
        t0 = time.perf_counter()
        inputs, targets, reset = self.batches.next()  # [B, T] each
        if reset:
            self.state = None
        with autocast(inputs.device, self.precision):
            hidden, self.state = self.model(inputs, _detach(self.state))  # [B, T, d_e]
        flat = hidden.reshape(-1, hidden.shape[-1])
        loss = TiedCrossEntropy.apply(flat, self.head, targets.reshape(-1), self.cfg.chunk_tokens)  # float32
        value = float(loss.detach())
        check_finite(value, f"{self.run_name} training loss at step {step}", self.last_finite)
        self.last_finite = value
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.step_seconds += time.perf_counter() - t0
        return value

    def evaluate(self, step: int, dev_stream: Tensor, train_loss: float | None) -> bool:
        """Score the dev stream, record it, ask the stop rule; anneal the learning rate by
        ``lr_decay`` when the dev loss did not improve.  Returns whether to stop."""
        t0 = time.perf_counter()
        dev = evaluate_stream(self.model, dev_stream, self.cfg.chunk_tokens, self.precision, self.head)
        self.eval_seconds += time.perf_counter() - t0
        last = self.history[-1]["dev_loss"] if self.history else None
        check_finite(dev["loss"], f"{self.run_name} dev loss at step {step}", last)
        lr = self.optimizer.param_groups[0]["lr"]
        record = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "train_loss": train_loss,
            "dev_loss": dev["loss"],
            "dev_ppl": dev["ppl"],
            "dev_accuracy": dev["accuracy"],
            "learning_rate": lr,
            "seconds": time.perf_counter() - self.t_start,
        }
        self.history.append(record)
        if self.on_eval is not None:
            self.on_eval(record)
        stop = self.stopper.update(step, dev["loss"], self.snapshot)
        if self.stopper.best_step != step:  # no improvement: anneal
            for group in self.optimizer.param_groups:
                group["lr"] = lr * self.cfg.lr_decay
        return stop

    def summary(self, step: int, stopped_by: str) -> dict[str, Any]:
        """How the run stopped and its best dev evaluation (see :func:`train_neural_lm`)."""
        best = next(r for r in self.history if r["step"] == self.stopper.best_step)
        tokens_processed = step * self.tokens_per_step
        return {
            "steps": step,
            "best_step": self.stopper.best_step,
            "stopped_by": stopped_by,
            "undertrained": stopped_by == "max_steps",
            "resumed_from_step": self.resumed_from_step,
            "dev_loss": best["dev_loss"],
            "dev_ppl": best["dev_ppl"],
            "dev_accuracy": best["dev_accuracy"],
            "tokens_processed": tokens_processed,
            "tokens_per_step": self.tokens_per_step,
            "batch_size": self.batches.batch_size,
            "eval_every": self.eval_every,
            "evaluations": len(self.history),
            "train_seconds": time.perf_counter() - self.t_start,
            "eval_seconds": self.eval_seconds,
            "tokens_per_s": tokens_processed / self.step_seconds if self.step_seconds > 0 else math.nan,
            "precision": self.precision,
        }


def train_neural_lm(
    model: nn.Module,
    train_stream: Tensor,
    dev_stream: Tensor,
    cfg: NeuralTrainConfig,
    *,
    seed: int,
    stateful: bool,
    run_name: str = "",
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    precision: str = "fp32",
    checkpoint: CheckpointSpec | None = None,
) -> TrainResult:
    """Train ``model`` (LSTM: ``stateful=True``; Transformer: False) to its best dev loss.

    Args:
        model: :class:`LSTMLM` or :class:`TransformerLM` (its ``embeddings`` buffer is the
            tied head).
        train_stream, dev_stream: ``[n]`` int64 token ids on the model's device.
        cfg: optimisation and stopping settings.
        seed: seeds the batch order (initialise the model under ``torch.manual_seed``
            before calling for a fully deterministic run).
        precision: ``fp32`` or ``bf16`` (:func:`newllm.runtime.resolve_precision`):
            ``bf16`` runs the model's forward under ``torch.autocast`` and the tied
            head's matmuls on a bf16 copy of the embeddings made once per run; the
            loss, log-sum-exp, weights and Adam stay float32.
        checkpoint: where to checkpoint after every ``checkpoint.every`` evaluations and
            resume from (a killed run resumes to identical numbers, tested); ``None``: off.

    Returns:
        :class:`newllm.training.TrainResult` with ``history``: one record per evaluation (``step``, ``tokens``,
        ``train_loss`` = mean over the steps since the last evaluation, ``dev_loss``,
        ``dev_ppl``, ``dev_accuracy``, ``seconds``); summary ``steps``, ``best_step``,
        ``stopped_by``, ``undertrained``, ``dev_loss``/``dev_ppl``/``dev_accuracy`` of the
        best step, ``tokens_processed``, ``train_seconds`` (loop incl. evaluations),
        ``eval_seconds``, ``tokens_per_s`` (optimizer steps only), ``precision``.  ``model`` holds the
        best weights on return.

    Raises:
        TrainingDivergedError: a NaN/Inf training or dev loss.
        ValueError: a training stream too short for one batch.
    """
    gen = torch.Generator().manual_seed(seed)
    batches = (BPTTBatches if stateful else RandomWindows)(train_stream, cfg.batch_size, cfg.seq_len, gen)
    run = NeuralTrainer(model, batches, cfg, run_name, on_eval, precision)
    model.train()
    step = run.resume(checkpoint)
    if step == 0:
        run.evaluate(0, dev_stream, None)
    window_losses = []
    for step in range(step + 1, cfg.max_steps + 1):
        window_losses.append(run.train_step(step))
        if step % run.eval_every == 0 or step == cfg.max_steps:
            stop = run.evaluate(step, dev_stream, float(np.mean(window_losses)))
            window_losses = []
            if stop:
                break
            if checkpoint is not None and len(run.history) % checkpoint.every == 0:
                run.save(checkpoint, step)
    stopped_by = run.stopper.finish(step)
    model.load_state_dict(run.stopper.best_state)
    return TrainResult(history=run.history, summary=run.summary(step, stopped_by))
