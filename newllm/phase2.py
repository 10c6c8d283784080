"""Phase 2: next-token prediction with the TokenBlock on cached contexts (docs/method.md §7).

The ContextBlock and the embeddings are frozen; the target ``stream[i+1]`` is predicted
from the input window ``x̃_i`` and ``cache[i]``, the ContextBlock's output of every layer
*after processing token i* (docs/method.md §6: ``cache[i] = F(c_{i-1}, x̃_i)``; nothing in
row i has seen token i+1).  Batches are independent, so positions are shuffled freely.

Training is the loop every model with the tied head shares (:func:`newllm.trainer.train_next_token`:
Adam, clipping, dev evaluations at one cadence, early stopping, annealing on plateau,
out-of-memory micro-batching, exact resume); this module supplies the TokenBlock as a
:class:`newllm.trainer.NextTokenModel` (:class:`CachedContexts`), the shuffled batches of
positions (:class:`PositionBatches`) and the evaluation.  The frozen head and its fused loss
live in :mod:`newllm.head`.  The best step's weights are kept and scored once on the test
split (:func:`final_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from newllm.checkpoint import CheckpointSpec
from newllm.config_fields import Phase2Fields
from newllm.flops import TRAIN_FLOPS_FORMULA, phase1_flops, train_flops
from newllm.head import TiedHead, tied_head, tied_token_nll
from newllm.metrics import perplexity, test_scores
from newllm.model import TokenBlock, TokenInput, count_parameters
from newllm.runtime import autocast
from newllm.trainer import accumulate, train_next_token
from newllm.training import ResumableBatches, TrainResult, config_from_dict

ContextCache = np.ndarray | Tensor | None
"""``[n, L, d_c]`` contexts (tensor, or a memory map gathered per batch), or ``None`` for
the no_context control (the TokenBlock reads zeros)."""


@dataclass
class Phase2Config(Phase2Fields):
    """Phase 2 hyper-parameters (docs/method.md §7): the fields of the schema's ``phase2``
    section (:class:`newllm.config_fields.Phase2Fields`, generated from it)."""

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], device: torch.device | None = None) -> "Phase2Config":
        """From a resolved ``phase2`` config section; ``chunk_tokens: null`` becomes the
        measured best per device (128 rows on CPU, 4096 on CUDA; benchmarks/throughput.py
        ``--chunk``: on one CPU thread at batch 256, d_e 64, 128 rows trained 1.05-1.13x as
        fast as 64 in three alternating pairs of runs, 256 no faster than 64)."""
        out = config_from_dict(cls, cfg)
        if out.chunk_tokens is None:
            out.chunk_tokens = 4096 if device is not None and device.type == "cuda" else 128
        return out


@dataclass
class Split:
    """A token stream and its context cache: ``stream`` ``[n]`` int64, ``cache`` ``[n, L, d_c]``."""

    stream: Tensor
    cache: ContextCache

    @property
    def targets(self) -> int:
        """Next-token targets: ``n - 1``."""
        return self.stream.shape[0] - 1

    def batch(self, positions: Tensor, token_input: TokenInput, num_layers: int, context_dim: int):
        """``(contexts [B, L, d_c], x̃ [B, N_in·d_e], targets [B])`` for ``positions`` ``[B]``."""
        device = self.stream.device
        if self.cache is None:
            ctx = torch.zeros(positions.shape[0], num_layers, context_dim, device=device)
        elif isinstance(self.cache, Tensor):
            ctx = self.cache[positions]
        else:
            ctx = torch.from_numpy(np.asarray(self.cache[positions.cpu().numpy()])).to(device, non_blocking=True)
        return ctx, token_input(self.stream, positions), self.stream[positions + 1]


class CachedContexts:
    """The TokenBlock on a split's cached contexts as a :class:`newllm.trainer.NextTokenModel`:
    a batch is ``[B]`` positions, its hidden states ``[B, 1, d_e]`` and targets ``[B, 1]``
    (``stream[i+1]``); the dev evaluation is :func:`evaluate`.  Nothing is carried
    between batches."""

    def __init__(
        self,
        block: TokenBlock,
        token_input: TokenInput,
        train: Split,
        dev: Split | None = None,
        cfg: Phase2Config | None = None,
        precision: str = "fp32",
    ) -> None:
        self.module, self.token_input, self.train, self.dev = block, token_input, train, dev
        self.cfg, self.precision = cfg, precision
        self.train_tokens = train.targets
        self.dev_tokens = 0 if dev is None else dev.targets

    def split(self, positions: Tensor, micro: int) -> list[tuple[Tensor, int]]:
        return [(part, part.shape[0]) for part in positions.split(micro)]

    def load(self, positions: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        ctx, x, y = self.train.batch(positions, self.token_input, self.module.num_layers, self.module.context_dim)
        return (ctx, x), y[:, None]

    def hidden(self, inputs: tuple[Tensor, Tensor]) -> Tensor:
        return self.module(*inputs)[:, None]  # [B, 1, d_e]

    def evaluate(self, head: TiedHead) -> dict[str, Any]:
        return evaluate(self.module, self.token_input, self.dev, self.cfg, precision=self.precision, head=head)

    def carry_tensors(self) -> dict[str, Tensor]:
        return {}

    def restore_carry(self, tensors: dict[str, Tensor]) -> None:
        pass


def accumulate_step(
    block: TokenBlock,
    token_input: TokenInput,
    split: Split,
    positions: Tensor,
    micro: int,
    chunk_tokens: int,
    precision: str = "fp32",
    head: TiedHead | None = None,
) -> Tensor:
    """Forward + backward of one training batch of ``positions`` in micro-batches of
    ``micro`` tokens (:func:`newllm.trainer.accumulate`: the gradient of the whole batch).
    ``bf16``: the TokenBlock forward under autocast and the head's matmuls in bf16
    (``head`` from :func:`newllm.head.tied_head`, made once per run; default: made here).

    Returns:
        the batch's mean loss (nats) as a 0-dim tensor on the batch's device, float64
        (float32 on ``mps``), not copied to the host.
    """
    head = tied_head(token_input.weight, precision) if head is None else head
    return accumulate(CachedContexts(block, token_input, split), positions, micro, head, chunk_tokens, precision)[0]


def evaluate(
    block: TokenBlock,
    token_input: TokenInput,
    split: Split,
    cfg: Phase2Config,
    return_token_nll: bool = False,
    *,
    precision: str = "fp32",
    head: TiedHead | None = None,
) -> dict[str, Any]:
    """Token-weighted mean NLL, perplexity and top-1 accuracy over all ``n - 1`` targets.

    Target ``i`` is ``stream[i+1]``, predicted from ``x̃_i`` and ``cache[i]``, in
    ``precision`` (as :func:`accumulate_step`; ``head`` as there).

    Returns:
        ``{"loss" (nats), "ppl", "accuracy", "tokens"}`` (accuracy: the mean tie-aware
        top-1 credit, :func:`newllm.head.top1_credit`), plus ``token_nll`` (``[n-1]``
        float32 numpy, nats) with ``return_token_nll``.
    """
    block.eval()
    head = tied_head(token_input.weight, precision) if head is None else head
    device = split.stream.device
    nll = torch.empty(split.targets, device=device)
    credit = torch.empty(split.targets, device=device)
    with torch.no_grad():
        for start in range(0, split.targets, cfg.eval_batch_size):
            pos = torch.arange(start, min(start + cfg.eval_batch_size, split.targets), device=device)
            ctx, x, y = split.batch(pos, token_input, block.num_layers, block.context_dim)
            with autocast(device, precision):
                hidden = block(ctx, x)  # [B, d_e]
            nll[pos], credit[pos] = tied_token_nll(hidden, head, y, cfg.chunk_tokens)
    loss = float(nll.double().mean())
    out: dict[str, Any] = {
        "loss": loss,
        "ppl": perplexity(loss),
        "accuracy": float(credit.double().mean()),
        "tokens": split.targets,
    }
    if return_token_nll:
        out["token_nll"] = nll.cpu().numpy()
    return out


class PositionBatches(ResumableBatches):
    """Seeded shuffled batches of training positions, epoch after epoch, resumable
    (:class:`newllm.training.ResumableBatches`: the generator's state at the start of
    each epoch and ``(epoch, offset)`` restore the exact position in the stream of
    batches).  An epoch's last batch holds what is left (it may be short)."""

    COUNTERS = ("epoch", "offset")

    def __init__(self, n_targets: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n, self.batch_size, self.device = n_targets, batch_size, device
        self.targets_per_batch = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.offset = 0, 0
        self._start_pass()

    def _new_pass(self) -> None:
        self.order = torch.randperm(self.n, generator=self.gen).to(self.device)
        self.epoch += 1
        self.offset = 0

    def next(self) -> Tensor:
        if self.offset >= self.n:
            self._start_pass()
        pos = self.order[self.offset : self.offset + self.batch_size]
        self.offset += pos.shape[0]
        return pos


def train_phase2(
    block: TokenBlock,
    token_input: TokenInput,
    train: Split,
    dev: Split,
    cfg: Phase2Config,
    *,
    seed: int = 0,
    run_name: str = "",
    on_batch: Callable[[int], None] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: CheckpointSpec | None = None,
    on_oom: Callable[[int], None] | None = None,
    precision: str = "fp32",
) -> TrainResult:
    """Train the TokenBlock on ``train`` to its best dev loss (docs/method.md §7) with the
    shared loop, :func:`newllm.trainer.train_next_token` (its docstring: cadence, stop
    rule, annealing, out-of-memory micro-batches, checkpoints; ``on_oom`` is called with
    each new micro-batch size).  ``seed`` seeds the order of positions.

    ``precision`` (``fp32`` | ``bf16``, resolved by :func:`newllm.runtime.resolve_precision`):
    ``bf16`` runs the TokenBlock forward under ``torch.autocast`` and the tied head's two
    vocabulary matmuls on a bf16 copy of the embeddings made once here; log-sum-exp,
    losses, gradients of the weights, Adam and the weights stay float32.

    Returns:
        :class:`TrainResult` with the history and summary of
        :data:`newllm.trainer.RECORD_KEYS` / :data:`newllm.trainer.SUMMARY_KEYS`; the
        block holds the best step's weights.

    Raises:
        TrainingDivergedError: a NaN/Inf loss, naming ``Phase 2 {run_name}`` and the step.
    """
    head = tied_head(token_input.weight, precision)  # once per run: identical rows merged, bf16 rows for bf16
    batches = PositionBatches(train.targets, cfg.batch_size, seed, train.stream.device)
    model = CachedContexts(block, token_input, train, dev, cfg, precision)
    return train_next_token(
        model,
        batches,
        head,
        cfg,
        precision=precision,
        run_name=f"Phase 2 {run_name}",
        on_batch=on_batch,
        on_eval=on_eval,
        on_oom=on_oom,
        checkpoint=checkpoint,
    )


def final_summary(
    summary: dict[str, Any],
    test_eval: dict[str, Any] | None,
    block: TokenBlock,
    token_input: TokenInput,
    context_parameters: int,
    phase1: dict[str, Any] | None = None,
    train_stream_tokens: int | None = None,
) -> dict[str, Any]:
    """A Phase 2 run's summary for its metrics file: the trainer's ``summary``, the test
    scores of the selected weights (``test_eval`` from :func:`evaluate`; ``None`` for a
    tuning trial, which is never scored on test), parameter counts and training compute
    (:mod:`newllm.flops`).

    ``parameters`` = the ContextBlock's (``context_parameters``; 0 without one) plus the
    TokenBlock's.  ``train_flops`` = Phase 2's :func:`newllm.flops.train_flops` of the
    TokenBlock, plus :func:`newllm.flops.phase1_flops` when the Phase 1 ``summary`` of a
    trained ContextBlock is given (``phase1``, with the training stream's length
    ``train_stream_tokens``); ``train_flops_includes_phase1`` says which.
    """
    vocab, embed_dim = token_input.weight.shape
    token_parameters = count_parameters(block)
    phase2 = train_flops(token_parameters, summary["tokens_processed"], vocab, embed_dim)
    first = 0.0 if phase1 is None else phase1_flops(context_parameters, train_stream_tokens, phase1["iterations"])
    return {
        **summary,
        **test_scores(test_eval),
        "context_block_parameters": context_parameters,
        "token_block_parameters": token_parameters,
        "parameters": context_parameters + token_parameters,
        "train_flops": phase2 + first,
        "phase2_train_flops": phase2,
        "phase1_train_flops": first,
        "train_flops_includes_phase1": phase1 is not None,
        "train_flops_formula": TRAIN_FLOPS_FORMULA + (" + 6 * context_parameters * n * phase1_iterations" if phase1 else ""),
        "selection": "best dev step; "
        + ("test not scored (tuning trial)" if test_eval is None else "test scored once with the selected weights"),
    }
