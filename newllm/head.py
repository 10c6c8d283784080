"""The frozen tied output head and its fused cross-entropy, shared by every model.

Every trained model here ends in a hidden state ``h`` ``[.., d_e]`` that meets the
frozen embedding matrix ``E`` ``[V, d_e]`` as ``logits = h Eᵀ`` (no bias; docs/method.md
§3 for CVFP's TokenBlock, §10 for the neural baselines, which use the same head).  This
module is that head: :func:`tied_head` builds it once per run (identical rows merged,
bf16 rows for bf16 runs, padding on CUDA), :class:`TiedCrossEntropy` is the training
loss with its gradient for ``h`` only, and :func:`tied_token_nll` the evaluation's
per-target NLL and top-1 credit.

Cost is dominated by the tied vocabulary projection ``[B, d_e] @ [d_e, V]`` and the
softmax over V = 50,257.  :class:`TiedCrossEntropy` fuses projection, log-softmax, loss
and the gradient with respect to the hidden state, in chunks of ``chunk_tokens`` rows
so that the ``[chunk, V]`` logits are never materialised for the whole batch, merges
identical head rows (:class:`TiedHead`) and takes the softmax shift from a sample of rows
folded into the matmul, so that one in-place ``exp`` is its only pass over the logits.
On a 2-core CPU (d_e = 64, batch 256) a Phase 2 training step runs 3.3× the rate of the
two full-vocabulary matmuls and about 10× ``F.cross_entropy(h @ Eᵀ, y)`` with the same
loss (``benchmarks/throughput.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from newllm.runtime import PRECISIONS

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
    top-1 credit (the raw ``z`` is compared; a row tied for the maximum counts its
    multiplicity, :func:`top1_credit`).  Exact up to floating-point summation order;
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
    def multiplicity(self) -> Tensor:
        """``[C]`` float32: the number of token ids that share each row (``m_c``; all 1
        without merging, 0 for the padding rows), exact integers.  Made once per head."""
        if self.log_mult is None:
            mult = torch.ones(self.rows.shape[0], device=self.rows.device)
        else:
            mult = self.log_mult.exp().round()
        if self.pad:
            mult[-self.pad :] = 0.0
        return mult

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
    tokens/s).  The loss, gradient and top-1 credits are those of the unpadded head up to
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


def top1_credit(logits: Tensor, target: Tensor, top: Tensor, multiplicity: Tensor) -> Tensor:
    """Top-1 accuracy of each row with ties broken at random: ``1/m`` where the target's
    logit equals the row maximum, else 0.

    ``m`` is the number of token ids whose logit equals the maximum: the sum of the
    multiplicities of the rows tied for it (the target's own row included, so a target
    in a merged row of ``m_y`` ids that wins alone gets ``1/m_y``: the shared "unknown"
    row of ~33k ids scores 1/33k, not a full hit).  This is the expected accuracy of a
    prediction that picks one of the tied ids uniformly at random; a unique maximum
    gives 1.  Ties are exact float equality of the logits as computed.

    Args:
        logits: ``[c, C]`` float32 raw logits of a chunk (padding rows ``−inf``).
        target: ``[c]`` the target's logit; ``top``: ``[c]`` the row maximum.
        multiplicity: ``[C]`` ids per row (:attr:`TiedHead.multiplicity`).

    Returns:
        ``[c]`` float32 credit in ``[0, 1]``.  Only rows that hit are compared with the
        whole row (a gather of those rows; one host sync for their count on a GPU).
    """
    credit = (target >= top).float()
    hit = credit.nonzero().squeeze(1)
    if hit.numel():
        tied = (logits[hit] == top[hit, None]).float() @ multiplicity  # [hits]: ids at the maximum
        credit[hit] = 1.0 / tied
    return credit


def tied_token_nll(hidden: Tensor, head: TiedHead | Tensor, targets: Tensor, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """Per-target NLL (nats) and tie-aware top-1 credit for ``[B, d_e]`` hidden states (no grad).

    ``head`` as in :class:`TiedCrossEntropy` (its rows' dtype sets the matmul precision).
    Log-sum-exp in fp32; one row maximum of the raw logits serves both the stable
    log-sum-exp and top-1 accuracy (no index reduction over the vocabulary): a target
    whose logit is the maximum, shared by ``m`` ids in all, scores ``1/m``
    (:func:`top1_credit`); the mean of the credits is the accuracy every model reports.

    Returns:
        ``(nll [B] float32, credit [B] float32 in [0, 1])``.
    """
    head = _as_head(head)
    classes = head.classes(targets)
    nll = torch.empty(hidden.shape[0], device=hidden.device)
    credit = torch.empty(hidden.shape[0], device=hidden.device)
    with torch.no_grad():
        for s in range(0, hidden.shape[0], chunk_tokens):
            y = classes[s : s + chunk_tokens]
            logits, target = _chunk_logits(hidden[s : s + chunk_tokens], head.rows, y, head.pad)  # [chunk, C] float32
            top = logits.amax(dim=1)
            credit[s : s + chunk_tokens] = top1_credit(logits, target, top, head.multiplicity)
            nll[s : s + chunk_tokens] = top + _shifted_exp(logits, top, head.log_mult).sum(dim=1).log() - target
    return nll, credit
