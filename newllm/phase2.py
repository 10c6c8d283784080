"""Phase 2: next-token prediction with the TokenBlock on cached contexts (SPEC §7).

The ContextBlock and the embeddings are frozen; the target ``stream[i+1]`` is predicted
from the input window ``x̃_i`` and ``cache[i]``, the ContextBlock's output of every layer
*after processing token i* (SPEC §6: ``cache[i] = F(c_{i-1}, x̃_i)``; nothing in row i
has seen token i+1).  Batches are independent, so positions are shuffled freely.

Training runs in optimizer steps, not epochs: the dev loss is measured every
``eval_every`` steps and :class:`newllm.training.EarlyStopping` ends the run when it stops
improving (never before ``min_steps``, always at ``max_steps``, which flags the run
``undertrained``).  The best step's weights are kept and scored once on the test split.

Cost is dominated by the tied vocabulary projection ``[B, d_e] @ [d_e, V]`` and the
softmax over V = 50,257.  :class:`TiedCrossEntropy` fuses projection, log-softmax, loss
and the gradient with respect to the hidden state, in chunks of ``chunk_tokens`` rows
so that the ``[chunk, V]`` logits are never materialised for the whole batch, merges
identical head rows (:class:`TiedHead`) and takes the softmax shift from a sample of rows
folded into the matmul, so that one in-place ``exp`` is its only pass over the logits.
On a 2-core CPU (d_e = 64, batch 256) a training step runs 3.3× the rate of the two
full-vocabulary matmuls and about 10× ``F.cross_entropy(h @ Eᵀ, y)`` with the same loss
(``benchmarks/throughput.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from newllm.checkpoint import CheckpointSpec, TrainState
from newllm.config import schema_dataclass
from newllm.metrics import perplexity
from newllm.model import TokenBlock, TokenInput
from newllm.runtime import PRECISIONS, autocast
from newllm.training import EarlyStopping, ResumableBatches, TrainResult, check_finite, config_from_dict

HEAD_PAD_MULTIPLE = 64
"""On CUDA the tied head's row count is padded to a multiple of this (:func:`tied_head`)."""
SHIFT_SAMPLE_ROWS = 256
"""Largest-norm head rows whose logits set a training chunk's softmax shift (see
:class:`TiedCrossEntropy`; any shift is exact, this one only avoids the max pass)."""


@dataclass(frozen=True)
class TiedHead:
    """The frozen tied output head with identical rows merged exactly.

    A stand-in embedding may give many ids one shared row (the bigram stand-in's
    "unknown" row: ~33k of 50,257 ids on the default corpus).  Identical rows give
    identical logits, so the softmax over the ``V`` ids equals a softmax over the ``C``
    distinct rows with each logit raised by ``ln(multiplicity)``; the NLL of a target is
    unchanged (``log Σ_c m_c e^{z_c} − z_y``), as is ``∂L/∂h = Σ_c p_c E_c − E_y`` and the
    top-1 hit (the raw ``z`` is compared).  Exact up to floating-point summation order;
    the vocabulary matmuls shrink by ``V/C`` (3.0× on the default corpus).

    The head may end in ``pad`` zero rows that no id maps to, so that the vocabulary
    matmuls' ``[c, C]`` logits have a row length that is a multiple of 64 (see
    :func:`tied_head`); every chunk sets their logits to ``−inf``, so they add nothing to
    the softmax, the gradient or the top-1 comparison.

    Attributes:
        rows: ``[C, d_e]`` distinct rows (then ``pad`` zero rows), float32 or bfloat16
            (the matmul dtype).
        log_mult: ``[C]`` float32 ``ln`` of each row's multiplicity (0 for the padding
            rows), or ``None`` when every row is distinct (then ``rows`` is the embedding
            matrix itself, ``C = V``, plus any padding).
        class_of: ``[V]`` int64 row index of each token id, or ``None`` (identity).
        pad: padding rows at the end of ``rows`` (``0``: none).
    """

    rows: Tensor
    log_mult: Tensor | None = None
    class_of: Tensor | None = None
    pad: int = 0

    def classes(self, targets: Tensor) -> Tensor:
        """Row index of each target id: ``[B]`` int64 -> ``[B]`` int64."""
        return targets if self.class_of is None else self.class_of[targets]

    @cached_property
    def shift_rows(self) -> tuple[Tensor, Tensor]:
        """The rows that set a training chunk's softmax shift (:class:`TiedCrossEntropy`):
        the :data:`SHIFT_SAMPLE_ROWS` largest-norm rows and the 32 largest multiplicities,
        as ``([K, d_e] rows, [K] ln multiplicity)`` float32 (columns of
        :attr:`shifted_rows_t`).  Made once per head."""
        aug = self.shifted_rows_t  # [d_e + 2, C]
        d, C = aug.shape[0] - 2, aug.shape[1]
        pick = aug[:d].norm(dim=0).topk(min(SHIFT_SAMPLE_ROWS, C)).indices
        if self.log_mult is not None:
            pick = torch.cat([pick, aug[d].topk(min(32, C)).indices]).unique()
        return aug[:d, pick].t(), aug[d, pick]

    @cached_property
    def shifted_rows_t(self) -> Tensor:
        """``[d_e + 2, C]`` float32, contiguous: ``rowsᵀ`` over a row of ``ln m_c`` (zeros
        without multiplicities) and a row of ones, so that ``[h, 1, −s] @ this`` is
        ``z_c + ln m_c − s`` in one matmul (:class:`TiedCrossEntropy`).  Made once per head."""
        rows = self.rows.float()
        log_mult = self.log_mult.clone() if self.log_mult is not None else rows.new_zeros(rows.shape[0])
        if self.pad:  # padding rows: z + ln m − s = −inf, so e^(…) = 0 (no 0·inf: ln m multiplies the 1 column)
            log_mult[-self.pad :] = float("-inf")
        return torch.cat([rows.t(), log_mult[None, :], rows.new_ones(1, rows.shape[0])]).contiguous()


def head_pad_multiple(device: torch.device) -> int:
    """The default row multiple of the tied head on ``device``: :data:`HEAD_PAD_MULTIPLE`
    on CUDA, 1 (no padding, results bit-identical to an unpadded head) elsewhere."""
    return HEAD_PAD_MULTIPLE if device.type == "cuda" else 1


def tied_head(embeddings: Tensor, precision: str = "fp32", pad_multiple: int | None = None) -> TiedHead:
    """The tied head of ``[V, d_e]`` float32 ``embeddings`` for ``precision``, made once
    per run: identical rows merged (:class:`TiedHead`), the rows kept float32 (``fp32``)
    or copied to bfloat16 (``bf16``).  :class:`TiedCrossEntropy` and
    :func:`tied_token_nll` run their matmuls in the rows' dtype.

    ``pad_multiple``: zero rows are appended until the row count is a multiple of it
    (:attr:`TiedHead.pad`); ``None`` = :func:`head_pad_multiple` of their device.  As
    nanoGPT pads GPT-2's 50,257 ids to 50,304: on an H200 (torch 2.11, cuBLAS) the bf16
    products ``[B, 768] @ [768, 50257]`` and ``[B, 50257] @ [50257, 768]`` ran at
    49–139 TFLOP/s and at 50,304 columns at 652–767 (B = 1,024–8,192), and
    ``train_phase2`` at batch 8,192 ran 1.8× faster in the same process (0.40M → 0.74M
    tokens/s).  The loss, gradient and top-1 hits are those of the unpadded head up to
    float32 summation order (tested).
    """
    rows, class_of, counts = torch.unique(embeddings, dim=0, return_inverse=True, return_counts=True)
    if rows.shape[0] == embeddings.shape[0]:  # all distinct: the matrix itself, in its own order
        rows, log_mult, class_of = embeddings, None, None
    else:
        log_mult = counts.float().log()
    if pad_multiple is None:
        pad_multiple = head_pad_multiple(embeddings.device)
    pad = -rows.shape[0] % pad_multiple
    if pad:
        rows = torch.cat([rows, rows.new_zeros(pad, rows.shape[1])])
        log_mult = None if log_mult is None else torch.cat([log_mult, log_mult.new_zeros(pad)])
    return TiedHead(rows if precision == "fp32" else rows.to(PRECISIONS[precision]), log_mult, class_of, pad)


def _as_head(head: TiedHead | Tensor) -> TiedHead:
    """A plain ``[V, d_e]`` matrix is a head with every row distinct."""
    return head if isinstance(head, TiedHead) else TiedHead(head)


def _chunk_logits(hidden: Tensor, rows: Tensor, targets: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """float32 logits ``[c, C]`` of one chunk of ``[c, d_e]`` hidden states against the
    head's ``rows`` and the target logits ``[c]`` (``targets`` are row indices); the last
    ``pad`` columns (the head's padding rows) set to ``−inf``.

    float32 rows: ``hidden @ rowsᵀ`` and a gather.  bfloat16 rows: the matmul in bf16
    (fp32 accumulation, bf16 output: ~3 significant digits, ±0.03 at a logit of 8) cast to
    fp32; the target logit is recomputed exactly in fp32 from the same bf16 operands and
    written back, so output rounding never ties the target with a competitor (top-1
    accuracy stays unbiased) and the NLL's own term carries no rounding.
    """
    if rows.dtype == torch.float32:
        logits = hidden.float() @ rows.t()
        target = logits.gather(1, targets[:, None]).squeeze(1)
    else:
        h = hidden.to(rows.dtype)
        logits = (h @ rows.t()).float()
        target = (h.float() * rows[targets].float()).sum(dim=1)
        logits.scatter_(1, targets[:, None], target[:, None])
    if pad:
        logits[:, -pad:] = float("-inf")
    return logits, target


def _shifted_exp(logits: Tensor, top: Tensor, log_mult: Tensor | None) -> Tensor:
    """In place: ``m_c · exp(z_c − max z)`` over a ``[c, C]`` chunk (``m ≡ 1`` without
    multiplicities).  Every term is at most its multiplicity, so nothing overflows."""
    logits.sub_(top[:, None])
    if log_mult is not None:
        logits.add_(log_mult)
    return logits.exp_()


def _max_shifted_chunk(hidden: Tensor, head: TiedHead, y: Tensor) -> tuple[Tensor, Tensor]:
    """NLL ``[c]`` and ``∂(Σ NLL)/∂h`` ``[c, d_e]`` (float32) of one chunk, shifted by the
    row maximum: any rows dtype; the reference for :func:`_sample_shifted_chunk`.

    One pass over the logits: ``e = m·exp(z − max z)`` in place; ``Z = Σ e``;
    ``loss = max + log Z − z_y``; ``∂L/∂h = (e E) / Z − E[y]`` (softmax never divided out).
    """
    logits, target = _chunk_logits(hidden, head.rows, y, head.pad)  # [c, C] float32
    top = logits.amax(dim=1)
    z = _shifted_exp(logits, top, head.log_mult).sum(dim=1)
    e_times_e = (logits.to(head.rows.dtype) @ head.rows).float()  # [c, d_e]
    return top + z.log() - target, e_times_e.div_(z[:, None]).sub_(head.rows[y].float())


def _sample_shifted_chunk(hidden: Tensor, head: TiedHead, y: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_max_shifted_chunk` for float32 rows, without the passes over the logits
    that find and subtract the maximum and add ``ln m``.

    log-sum-exp is exact for any shift ``s``: ``log Σ m_c e^{z_c} = s + log Σ e^{z_c + ln m_c − s}``.
    The shift is the largest logit (with ``ln m``) over the head's :attr:`TiedHead.shift_rows`,
    a lower bound of the maximum, so ``Z ≥ 1`` (no underflow); it enters the vocabulary
    matmul as an extra column (``[h, 1, −s] @`` :attr:`TiedHead.shifted_rows_t`), and one
    in-place ``exp`` is the only elementwise pass.  A row whose maximum lies so far above
    the sample's that ``Z`` overflows (not finite) is recomputed by
    :func:`_max_shifted_chunk`.  Equal to it up to float32 rounding (tested).
    """
    rows = head.rows
    sample, sample_log_mult = head.shift_rows
    h = hidden.float()
    shift = torch.addmm(sample_log_mult, h, sample.t()).amax(dim=1)  # [c]
    h_aug = torch.cat([h, h.new_ones(h.shape[0], 1), -shift[:, None]], dim=1)  # [c, d_e + 2]
    e = (h_aug @ head.shifted_rows_t).exp_()  # [c, C]: m_c·exp(z_c − s)
    z = e.sum(dim=1)
    target_rows = rows[y]
    nll = shift + z.log() - (h * target_rows).sum(dim=1)
    grad = (e @ rows).div_(z[:, None]).sub_(target_rows)
    bad = ~torch.isfinite(z)
    if bool(bad.any()):
        nll[bad], grad[bad] = _max_shifted_chunk(hidden[bad], head, y[bad])
    return nll, grad


class TiedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``softmax(h Eᵀ)`` against ``targets``, gradient for ``h`` only.

    ``E`` is frozen, so the backward needs only ``∂L/∂h = (softmax(hEᵀ) - onehot) E / B``,
    computed chunk by chunk during the forward pass and saved.

    Inputs: ``hidden`` ``[B, d_e]`` (float32, or bfloat16 from an autocast region),
    ``head`` (:func:`tied_head`, or a plain ``[V, d_e]`` matrix), ``targets`` ``[B]``
    int64 token ids, ``chunk_tokens`` int.  The two vocabulary matmuls run in the head
    rows' dtype; max, exp, sum, log and the loss are float32 either way.  Output: scalar
    float32 mean loss in nats; ``∂L/∂h`` in ``hidden``'s dtype.

    Per chunk: :func:`_sample_shifted_chunk` for float32 rows (the softmax shift from a
    sample of rows, folded into the matmul), :func:`_max_shifted_chunk` for bfloat16 rows.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, head: TiedHead | Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:  # type: ignore[override]
        head = _as_head(head)
        classes = head.classes(targets)
        nll = torch.empty(hidden.shape[0], device=hidden.device)
        grad = torch.empty_like(hidden, dtype=torch.float32)
        chunk_loss = _sample_shifted_chunk if head.rows.dtype == torch.float32 else _max_shifted_chunk
        for s in range(0, hidden.shape[0], chunk_tokens):
            part = slice(s, s + chunk_tokens)
            nll[part], grad[part] = chunk_loss(hidden[part], head, classes[part])
        ctx.hidden_dtype = hidden.dtype
        ctx.save_for_backward(grad)
        return nll.sum() / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * (grad_output / grad.shape[0])).to(ctx.hidden_dtype), None, None, None


def tied_token_nll(hidden: Tensor, head: TiedHead | Tensor, targets: Tensor, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """Per-target NLL (nats) and top-1 hits for ``[B, d_e]`` hidden states (no grad).

    ``head`` as in :class:`TiedCrossEntropy` (its rows' dtype sets the matmul precision).
    Log-sum-exp in fp32; one row maximum of the raw logits serves both the stable
    log-sum-exp and top-1 accuracy (a hit is a target logit equal to the row maximum: no
    index reduction over the vocabulary; an exact tie for the maximum counts as a hit).

    Returns:
        ``(nll [B] float32, correct [B] bool)``.
    """
    head = _as_head(head)
    classes = head.classes(targets)
    nll = torch.empty(hidden.shape[0], device=hidden.device)
    correct = torch.empty(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    with torch.no_grad():
        for s in range(0, hidden.shape[0], chunk_tokens):
            y = classes[s : s + chunk_tokens]
            logits, target = _chunk_logits(hidden[s : s + chunk_tokens], head.rows, y, head.pad)  # [chunk, C] float32
            top = logits.amax(dim=1)
            correct[s : s + chunk_tokens] = target >= top
            nll[s : s + chunk_tokens] = top + _shifted_exp(logits, top, head.log_mult).sum(dim=1).log() - target
    return nll, correct


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


ContextCache = np.ndarray | Tensor | None
"""``[n, L, d_c]`` contexts (tensor, or a memory map gathered per batch), or ``None`` for
the no_context control (the TokenBlock reads zeros)."""


@schema_dataclass("phase2")
class Phase2Config:
    """Phase 2 hyper-parameters (SPEC §7 defaults): the fields of ``config/schema.yaml``'s
    ``phase2`` section, generated from it (:func:`newllm.config.schema_dataclass`)."""

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
    """Forward + backward of one training batch in micro-batches of ``micro`` tokens with
    gradient accumulation: the gradient equals that of the whole batch (each part's
    mean loss weighted by its share).  ``bf16``: the TokenBlock forward under autocast
    and the head's matmuls in bf16 (``head`` from :func:`tied_head`, made once per run;
    default: made here); the loss stays float32.

    Returns:
        the batch's mean loss (nats) as a 0-dim tensor on the batch's device, float64
        (float32 on ``mps``, which has no float64), not copied to the host: the trainer
        reads a whole evaluation interval's losses with one host sync (issue 10), so a GPU
        is not stalled after every step.  The value equals the float64 sum of the parts'
        mean losses times their sizes over the batch size.
    """
    head = tied_head(token_input.weight, precision) if head is None else head
    device = split.stream.device
    total = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    n = positions.shape[0]
    for start in range(0, n, micro):
        pos = positions[start : start + micro]
        ctx, x, y = split.batch(pos, token_input, block.num_layers, block.context_dim)
        with autocast(device, precision):
            hidden = block(ctx, x)  # [micro, d_e]
        loss = TiedCrossEntropy.apply(hidden, head, y, chunk_tokens)
        (loss * (pos.shape[0] / n)).backward()
        total += loss.detach().to(total.dtype) * pos.shape[0]
    return total / n


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
        ``{"loss" (nats), "ppl", "accuracy", "tokens"}``, plus ``token_nll`` (``[n-1]``
        float32 numpy, nats) with ``return_token_nll``.
    """
    block.eval()
    head = tied_head(token_input.weight, precision) if head is None else head
    device = split.stream.device
    nll = torch.empty(split.targets, device=device)
    correct = torch.empty(split.targets, dtype=torch.bool, device=device)
    with torch.no_grad():
        for start in range(0, split.targets, cfg.eval_batch_size):
            pos = torch.arange(start, min(start + cfg.eval_batch_size, split.targets), device=device)
            ctx, x, y = split.batch(pos, token_input, block.num_layers, block.context_dim)
            with autocast(device, precision):
                hidden = block(ctx, x)  # [B, d_e]
            nll[pos], correct[pos] = tied_token_nll(hidden, head, y, cfg.chunk_tokens)
    loss = float(nll.double().mean())
    out: dict[str, Any] = {
        "loss": loss,
        "ppl": perplexity(loss),
        "accuracy": float(correct.double().mean()),
        "tokens": split.targets,
    }
    if return_token_nll:
        out["token_nll"] = nll.cpu().numpy()
    return out


class _Batches(ResumableBatches):
    """Seeded shuffled batches of training positions, epoch after epoch, resumable
    (:class:`newllm.training.ResumableBatches`: the generator's state at the start of
    each epoch and ``(epoch, offset)`` restore the exact position in the stream of batches)."""

    COUNTERS = ("epoch", "offset")

    def __init__(self, n_targets: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n, self.batch_size, self.device = n_targets, batch_size, device
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


def _optimizer_step(
    block: TokenBlock,
    token_input: TokenInput,
    train: Split,
    pos: Tensor,
    optimizer,
    micro: int,
    cfg: Phase2Config,
    on_oom,
    precision: str = "fp32",
    head: TiedHead | None = None,
) -> tuple[Tensor, int]:
    """Forward/backward of one batch, redone in micro-batches of half the size with
    gradient accumulation (the same optimizer step) on out-of-memory, halving until it
    fits.  Returns ``(loss, micro)``: the batch's mean loss (nats, a 0-dim tensor on the
    device, as from :func:`accumulate_step`) and the micro-batch size in use; the step
    itself is not taken."""
    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            return accumulate_step(block, token_input, train, pos, micro, cfg.chunk_tokens, precision, head), micro
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_oom(err) or micro <= 1:
                raise
            micro = max(1, micro // 2)
            if train.stream.device.type == "cuda":
                torch.cuda.empty_cache()
            if on_oom is not None:
                on_oom(micro)


def _anneal(optimizer: torch.optim.Optimizer, stopper: EarlyStopping, step: int, lr_decay: float) -> None:
    """Multiply the learning rate by ``lr_decay`` after an evaluation that did not improve
    the dev loss (annealing on plateau, as the neural baselines do)."""
    if stopper.best_step != step:
        for group in optimizer.param_groups:
            group["lr"] *= lr_decay


def _phase2_summary(
    state: TrainState, stopper: EarlyStopping, counters: dict[str, Any], train: Split, dev: Split, precision: str
) -> dict[str, Any]:
    """The run's summary (keys in :func:`train_phase2`) from its best dev evaluation."""
    step, train_seconds = counters["step"], counters["train_seconds"]
    best = next(r for r in state.history if r["step"] == stopper.best_step)
    return {
        "steps": step,
        "epochs": counters["tokens"] / train.targets,
        "tokens_processed": counters["tokens"],
        "best_step": stopper.best_step,
        "stopped_by": stopper.stopped_by,
        "undertrained": stopper.undertrained,
        "resumed_from_step": counters["resumed_from_step"],
        "micro_batch_size": counters["micro"],
        "dev_loss": best["dev_loss"],
        "dev_ppl": best["dev_ppl"],
        "dev_accuracy": best["dev_accuracy"],
        "train_ppl": best["train_ppl"],
        "final_learning_rate": state.optimizer.param_groups[0]["lr"],
        "train_tokens": train.targets,
        "dev_tokens": dev.targets,
        "train_seconds": train_seconds,
        "eval_seconds": counters["eval_seconds"],
        "tokens_per_s": counters["tokens"] / max(train_seconds, 1e-9),
        "precision": precision,
    }


def _interval_losses(pending: list[Tensor], step: int, run_name: str, last_finite: Any) -> list[float]:
    """The losses (nats) of the steps ``step - len(pending) + 1 … step``, read from the
    device with one host sync.

    Raises:
        TrainingDivergedError: naming the first step whose loss is NaN/Inf (the steps after
            it ran on diverged weights and are discarded with the run).
    """
    values = torch.stack(pending).tolist()
    for offset, value in enumerate(values):
        check_finite(value, f"Phase 2 {run_name}, step {step - len(values) + 1 + offset}", last_finite)
    return values


def _dev_evaluation(block, token_input, dev, cfg, precision, head, n, losses, epoch, optimizer) -> dict[str, Any]:
    """One history record: the dev evaluation after ``n["step"]`` steps (its seconds added to
    ``n["eval_seconds"]``), the mean training loss of the steps since the last one
    (``losses``, nats), the learning rate those steps ran at and the training rate."""
    t1 = time.perf_counter()
    dev_eval = evaluate(block, token_input, dev, cfg, precision=precision, head=head)
    block.train()
    n["eval_seconds"] += time.perf_counter() - t1
    train_loss = sum(losses) / len(losses)
    return {
        "step": n["step"],
        "epoch": epoch,
        "train_loss": train_loss,
        "train_ppl": perplexity(train_loss),
        "dev_loss": dev_eval["loss"],
        "dev_ppl": dev_eval["ppl"],
        "dev_accuracy": dev_eval["accuracy"],
        "learning_rate": optimizer.param_groups[0]["lr"],
        "tokens_per_s": n["tokens"] / n["train_seconds"],
    }


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
    """Train the TokenBlock with Adam, gradient clipping, plateau annealing and early
    stopping on dev (SPEC §7; the annealing is the neural baselines' rule).

    Converged means: dev loss has not improved by more than ``min_delta`` nats for
    ``patience`` evaluations; each such evaluation multiplies the learning rate by
    ``lr_decay``.

    Loop (one optimizer step each): next shuffled batch → forward/backward
    (:func:`_optimizer_step`, micro-batched on out-of-memory, ``on_oom`` called with each
    new micro-batch size) → clip → step → every ``eval_every`` steps: the interval's
    losses read with one host sync (a NaN/Inf raises, naming its step), dev evaluation,
    early-stopping update, annealing, checkpoint.  On CUDA, Adam is the fused
    single-kernel one (same update rule).  The block ends with the best step's weights.
    Checkpoints (every ``checkpoint.every`` evaluations) hold everything the next step
    reads, so a killed run resumes to identical numbers.

    ``precision`` (``fp32`` | ``bf16``, resolved by :func:`newllm.runtime.resolve_precision`):
    ``bf16`` runs the TokenBlock forward under ``torch.autocast`` and the tied head's two
    vocabulary matmuls on a bf16 copy of the embeddings made once here; log-sum-exp,
    losses, gradients of the weights, Adam and the weights stay float32.

    Returns:
        :class:`TrainResult`: ``history`` per evaluation (``step``, ``epoch``,
        ``train_loss`` (mean over the steps since the last evaluation), ``dev_loss``,
        ``dev_ppl``, ``dev_accuracy``, ``learning_rate``, ``tokens_per_s``); ``summary``
        with ``steps``, ``best_step``, ``stopped_by``, ``undertrained``,
        ``dev_loss``/``dev_ppl``/``dev_accuracy`` of the best step, ``train_tokens``,
        ``train_seconds``, ``tokens_per_s`` (training steps only), ``eval_seconds``,
        ``precision``.

    Raises:
        TrainingDivergedError: a NaN/Inf loss.
    """
    head = tied_head(token_input.weight, precision)  # once per run: identical rows merged, bf16 rows for bf16
    fused = True if train.stream.device.type == "cuda" else None  # CPU: torch's default, results unchanged
    optimizer = torch.optim.Adam(block.parameters(), lr=cfg.learning_rate, fused=fused)
    stopper = EarlyStopping(cfg.patience, cfg.min_steps, cfg.max_steps, cfg.min_delta)
    batches = _Batches(train.targets, cfg.batch_size, seed, train.stream.device)
    state = TrainState(block, optimizer, stopper)
    n = {"step": 0, "tokens": 0, "micro": cfg.batch_size, "train_seconds": 0.0, "eval_seconds": 0.0, "resumed_from_step": None}
    resumed = state.load(checkpoint)
    if resumed:
        n.update({k: resumed[k] for k in ("step", "tokens", "train_seconds", "eval_seconds")})
        n["resumed_from_step"] = resumed["step"]
        batches.restore(resumed["batches"], state.extra_tensors["epoch_rng"])
    pending: list[Tensor] = []  # the steps' losses since the last evaluation, on the device
    block.train()
    t0 = time.perf_counter()
    while stopper.stopped_by is None:
        pos = batches.next()
        value, n["micro"] = _optimizer_step(block, token_input, train, pos, optimizer, n["micro"], cfg, on_oom, precision, head)
        torch.nn.utils.clip_grad_norm_(block.parameters(), cfg.grad_clip)
        optimizer.step()
        n["step"] += 1
        n["tokens"] += pos.shape[0]  # an epoch's last batch may be short
        pending.append(value)
        if on_batch is not None:
            on_batch(pos.shape[0])
        if n["step"] % cfg.eval_every and n["step"] < cfg.max_steps:
            continue
        losses = _interval_losses(pending, n["step"], run_name, state.history[-1:] or None)  # one host sync
        pending = []
        n["train_seconds"] += time.perf_counter() - t0
        record = _dev_evaluation(block, token_input, dev, cfg, precision, head, n, losses, batches.epoch, optimizer)
        state.history.append(record)
        if on_eval is not None:
            on_eval(record)
        stopper.update(n["step"], record["dev_loss"], block.state_dict)
        _anneal(optimizer, stopper, n["step"], cfg.lr_decay)
        if checkpoint and stopper.stopped_by is None and len(state.history) % checkpoint.every == 0:
            batch_state, epoch_rng = batches.state()
            counters = {k: n[k] for k in ("step", "tokens", "train_seconds", "eval_seconds")}
            state.save(checkpoint, {**counters, "batches": batch_state}, {"epoch_rng": epoch_rng})
        t0 = time.perf_counter()
    block.load_state_dict(stopper.best_state)
    return TrainResult(history=state.history, summary=_phase2_summary(state, stopper, n, train, dev, precision))
