"""The neural baselines (LSTM, Transformer; docs/method.md §10) on the shared next-token loop.

Training is :func:`newllm.trainer.train_next_token`, the loop Phase 2 runs too (Adam,
clipping, dev evaluations at one cadence, early stopping on dev with ``min_delta``,
annealing on plateau by ``lr_decay``, out-of-memory micro-batching, exact resume; the
best dev weights are restored before the test evaluation).  This module supplies the
baselines' batch sources and the model adapter (:class:`StreamLM`).

Batches (deterministic per seed through one ``torch.Generator``):

- LSTM, truncated BPTT: the training stream is cut into ``batch_size`` contiguous lanes;
  step ``i`` feeds the next ``seq_len`` tokens of every lane and carries the LSTM state
  from the previous window (detached: gradients stop at window boundaries).  After a
  full pass the state is reset and the next pass starts at a random offset in
  ``[0, seq_len)`` so window boundaries move between passes.
- Transformer: ``batch_size`` windows of ``seq_len`` (= block_size) tokens at uniformly
  random offsets (nanoGPT's ``get_batch``), no state.

Either way one optimizer step processes ``batch_size × seq_len`` targets, every one of
them with a loss term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from newllm.baselines.models import SEQ_LEN_KEY, SizeMatch
from newllm.checkpoint import CheckpointSpec
from newllm.config_fields import EarlyStoppingFields
from newllm.flops import TRAIN_FLOPS_FORMULA, train_flops
from newllm.head import TiedHead, tied_head, tied_token_nll
from newllm.metrics import perplexity, test_scores
from newllm.model import count_parameters
from newllm.runtime import autocast
from newllm.trainer import train_next_token
from newllm.training import ResumableBatches, TrainResult, config_from_dict


@dataclass
class NeuralTrainConfig(EarlyStoppingFields):
    """Hyper-parameters of one neural baseline run: the stop rule's fields of the schema's
    ``baselines.early_stopping`` section (:class:`newllm.config_fields.EarlyStoppingFields`,
    generated from it), then the model's own section ``baselines.<model>`` (the defaults
    here are the schema's LSTM defaults; a test keeps them equal)."""

    learning_rate: float = 1e-2
    lr_decay: float = 0.5
    grad_clip: float = 1.0
    batch_size: int = 16
    seq_len: int = 32
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

    @classmethod
    def for_model(cls, name: str, baselines: dict[str, Any], device: torch.device | None = None) -> "NeuralTrainConfig":
        """The settings of baseline ``name`` from the resolved ``baselines`` section:
        ``early_stopping``, then ``baselines.<name>`` (its window key, :data:`SEQ_LEN_KEY`,
        as ``seq_len``), then the shared ``chunk_tokens``."""
        settings = baselines[name]
        merged = {**baselines["early_stopping"], **settings, "seq_len": settings[SEQ_LEN_KEY[name]]}
        return cls.from_dict({**merged, "chunk_tokens": baselines["chunk_tokens"]}, device)


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
        self.targets_per_batch = lanes * seq_len
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
        self.targets_per_batch = batch_size * seq_len

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
    (:func:`newllm.head.tied_head` of the model's embeddings; made here when ``None``),
    log-sum-exp and NLL in float32.

    Returns:
        ``{"loss", "ppl", "accuracy", "tokens", "token_nll"}``: mean NLL (nats per
        target), ``exp(loss)``, tie-aware top-1 accuracy (:func:`newllm.head.top1_credit`),
        ``n-1``, and the ``[n-1]`` float32 numpy vector of per-target NLL whose mean is ``loss``.
    """
    was_training = model.training
    model.eval()
    head = tied_head(model.embeddings, precision) if head is None else head
    with autocast(stream.device, precision):
        hidden = model.stream_hidden(stream)  # [n-1, d_e]
    nll, credit = tied_token_nll(hidden, head, stream[1:], chunk_tokens)
    model.train(was_training)
    vector = nll.double().cpu().numpy()
    loss = float(vector.mean())
    return {
        "loss": loss,
        "ppl": perplexity(loss),
        "accuracy": float(credit.double().mean()),
        "tokens": int(vector.size),
        "token_nll": vector.astype(np.float32),
    }


class StreamLM:
    """A baseline LM (``forward(tokens [B, T], state) -> (h [B, T, d_e], state)``) as a
    :class:`newllm.trainer.NextTokenModel`: a batch is ``(inputs [B, T], targets [B, T],
    reset)`` from :class:`BPTTBatches` or :class:`RandomWindows`; the dev evaluation is
    :func:`evaluate_stream`.

    A recurrent model's state (a tuple of ``[layers, B, …]`` tensors, lanes on dim 1)
    carries over from one batch to the next, detached, and is dropped where the batch
    source says ``reset``.  Micro-batches (after out-of-memory) are groups of lanes, each
    reading its lanes' slice of the state; the batch's final state is the lanes' parts
    put back together, and it is taken up only when the next batch begins, so a step
    retried after out-of-memory starts again from the state it started from.
    """

    def __init__(self, model: nn.Module, train_stream: Tensor, dev_stream: Tensor, chunk_tokens: int, precision: str) -> None:
        self.module, self.dev, self.chunk_tokens, self.precision = model, dev_stream, chunk_tokens, precision
        self.train_tokens, self.dev_tokens = train_stream.shape[0] - 1, dev_stream.shape[0] - 1
        self.carry: tuple[Tensor, ...] | None = None  # the state the current batch starts from
        self._parts: list[tuple[Tensor, ...]] = []  # its lanes' final states, part by part
        self._batch: Any = None

    def _final(self) -> tuple[Tensor, ...] | None:
        return tuple(torch.cat(lanes, dim=1) for lanes in zip(*self._parts)) if self._parts else None

    def split(self, batch: tuple[Tensor, Tensor, bool], micro: int) -> list[tuple[Any, int]]:
        inputs, targets, reset = batch
        if batch is not self._batch:  # a new batch: the previous one's step is done
            self.carry = None if reset else self._final()
            self._batch = batch
        self._parts = []
        rows = inputs.shape[0]
        return [
            ((inputs[s : s + micro], targets[s : s + micro], slice(s, s + micro)), min(micro, rows - s))
            for s in range(0, rows, micro)
        ]

    def load(self, part: tuple[Tensor, Tensor, slice]) -> tuple[tuple[Tensor, slice], Tensor]:
        inputs, targets, lanes = part
        return (inputs, lanes), targets

    def hidden(self, inputs: tuple[Tensor, slice]) -> Tensor:
        tokens, lanes = inputs
        state = None if self.carry is None else tuple(s[:, lanes] for s in self.carry)
        hidden, new = self.module(tokens, state)  # [b, T, d_e]
        if new is not None:
            self._parts.append(tuple(s.detach() for s in new))
        return hidden

    def evaluate(self, head: TiedHead) -> dict[str, Any]:
        return evaluate_stream(self.module, self.dev, self.chunk_tokens, self.precision, head)

    def carry_tensors(self) -> dict[str, Tensor]:
        return {f"carry.{i}": t for i, t in enumerate(self._final() or ())}

    def restore_carry(self, tensors: dict[str, Tensor]) -> None:
        device = next(self.module.parameters()).device
        carry = tuple(tensors[f"carry.{i}"].to(device) for i in range(sum(k.startswith("carry.") for k in tensors)))
        self._parts, self._batch = ([carry] if carry else []), None


def train_neural_lm(
    model: nn.Module,
    train_stream: Tensor,
    dev_stream: Tensor,
    cfg: NeuralTrainConfig,
    *,
    seed: int,
    stateful: bool,
    run_name: str = "",
    on_batch: Callable[[int], None] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    on_oom: Callable[[int], None] | None = None,
    precision: str = "fp32",
    checkpoint: CheckpointSpec | None = None,
) -> TrainResult:
    """Train ``model`` (recurrent with truncated BPTT: ``stateful=True``; Transformer:
    False) to its best dev loss with :func:`newllm.trainer.train_next_token` (its
    docstring: cadence, stop rule, annealing, out-of-memory micro-batches, checkpoints).

    Args:
        model: :class:`~newllm.baselines.models.LSTMLM`, :class:`~newllm.baselines.models.TransformerLM`
            or another LM with that interface (its ``embeddings`` buffer is the tied head).
        train_stream, dev_stream: ``[n]`` int64 token ids on the model's device.
        cfg: optimisation and stopping settings (``chunk_tokens`` resolved).
        seed: seeds the batch order (initialise the model under ``torch.manual_seed``
            before calling for a fully deterministic run).
        precision: ``fp32`` or ``bf16`` (:func:`newllm.runtime.resolve_precision`):
            ``bf16`` runs the model's forward under ``torch.autocast`` and the tied
            head's matmuls on a bf16 copy of the embeddings made once per run; the
            loss, log-sum-exp, weights and Adam stay float32.

    Returns:
        :class:`newllm.training.TrainResult` with the history and summary of
        :data:`newllm.trainer.RECORD_KEYS` / :data:`newllm.trainer.SUMMARY_KEYS`;
        ``model`` holds the best weights.

    Raises:
        TrainingDivergedError: a NaN/Inf training or dev loss, naming the step.
        ValueError: a training stream too short for one batch, or ``chunk_tokens`` unresolved.
    """
    if cfg.chunk_tokens is None:
        raise ValueError("NeuralTrainConfig.chunk_tokens is None: resolve it with NeuralTrainConfig.from_dict(cfg, device)")
    gen = torch.Generator().manual_seed(seed)
    batches = (BPTTBatches if stateful else RandomWindows)(train_stream, cfg.batch_size, cfg.seq_len, gen)
    head = tied_head(model.embeddings, precision)  # once per run: identical rows merged, bf16 rows for bf16
    lm = StreamLM(model, train_stream, dev_stream, cfg.chunk_tokens, precision)
    return train_next_token(
        lm,
        batches,
        head,
        cfg,
        precision=precision,
        run_name=run_name,
        on_batch=on_batch,
        on_eval=on_eval,
        on_oom=on_oom,
        checkpoint=checkpoint,
    )


def final_summary(
    summary: dict[str, Any],
    test_eval: dict[str, Any] | None,
    test_seconds: float,
    model: nn.Module,
    size: SizeMatch,
    size_name: str,
) -> dict[str, Any]:
    """A baseline run's summary for its metrics file: the trainer's ``summary``, the test
    scores of the best weights (``test_eval`` from :func:`evaluate_stream`, which took
    ``test_seconds``; ``None`` for a tuning trial, never scored on test), the parameter
    match (``size``: the chosen ``size_name`` and its target) and ``train_flops``
    (:func:`newllm.flops.train_flops`, the formula every model's is)."""
    parameters = count_parameters(model)
    vocab, embed_dim = model.embeddings.shape
    return {
        **summary,
        **test_scores(test_eval),
        **({} if test_eval is None else {"test_seconds": test_seconds}),
        "parameters": parameters,
        "parameter_target": size.target,
        "parameter_gap": parameters / size.target - 1.0,
        "size_name": size_name,
        "size": size.size,
        "train_flops": train_flops(parameters, summary["tokens_processed"], vocab, embed_dim),
        "train_flops_formula": TRAIN_FLOPS_FORMULA,
    }
