"""Phase 2: next-token prediction with the TokenBlock on cached contexts (SPEC §7).

The ContextBlock and the embeddings are frozen; token ``i`` is predicted from its input
window ``x̃_i`` and the cached context produced at token ``i-1`` (``cache[i]``), with
target ``stream[i+1]``.  Batches are independent, so positions are shuffled freely.

Cost is dominated by the tied vocabulary projection ``[B, d_e] @ [d_e, V]`` and the
softmax over V = 50,257.  :class:`TiedCrossEntropy` fuses projection, log-softmax, loss
and the gradient with respect to the hidden state, in chunks of ``chunk_tokens`` rows
so that the ``[chunk, V]`` logits stay in cache and are never materialised for the whole
batch.  On a 2-core CPU (d_e = 64) a training step then runs at about the speed of its
two vocabulary matmuls, 1.1× (128-token batches) to 1.7× (1024) faster than
``F.cross_entropy(h @ Eᵀ, y)`` with the same loss (``benchmarks/throughput.py``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from newllm.checkpoint import (
    CheckpointSpec,
    load_checkpoint,
    maybe_inject_fault,
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    save_checkpoint,
    unprefixed,
)
from newllm.metrics import perplexity
from newllm.model import TokenBlock, TokenInput
from newllm.phase1 import TrainingDivergedError


class TiedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``softmax(h Eᵀ)`` against ``targets``, gradient for ``h`` only.

    ``E`` is frozen, so the backward needs only ``∂L/∂h = (softmax(hEᵀ) - onehot) E / B``,
    computed chunk by chunk during the forward pass and saved.

    Inputs: ``hidden`` ``[B, d_e]``, ``embeddings`` ``[V, d_e]``, ``targets`` ``[B]``
    int64, ``chunk_tokens`` int.  Output: scalar mean loss in nats.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, embeddings: Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:  # type: ignore[override]
        total = hidden.new_zeros(())
        grad = torch.empty_like(hidden)
        for s in range(0, hidden.shape[0], chunk_tokens):
            logits = hidden[s : s + chunk_tokens] @ embeddings.t()  # [chunk, V]
            y = targets[s : s + chunk_tokens]
            lse = torch.logsumexp(logits, dim=1)
            total = total + (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # in place: softmax
            probs[torch.arange(probs.shape[0], device=probs.device), y] -= 1.0
            grad[s : s + chunk_tokens] = probs @ embeddings
        ctx.save_for_backward(grad)
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * (grad_output / grad.shape[0]), None, None, None


def tied_nll_and_correct(hidden: Tensor, embeddings: Tensor, targets: Tensor, chunk_tokens: int) -> tuple[float, int]:
    """Summed NLL (nats) and number of top-1 hits for ``[B, d_e]`` hidden states (no grad).

    One row maximum serves both the stable log-sum-exp and the argmax.
    """
    nll, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, hidden.shape[0], chunk_tokens):
            logits = hidden[s : s + chunk_tokens] @ embeddings.t()  # [chunk, V]
            y = targets[s : s + chunk_tokens]
            target = logits.gather(1, y[:, None]).squeeze(1)
            top, argmax = logits.max(dim=1)
            lse = top + logits.sub_(top[:, None]).exp_().sum(dim=1).log()
            nll += float((lse - target).sum())
            correct += int((argmax == y).sum())
    return nll, correct


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def accumulate_step(block: TokenBlock, token_input: TokenInput, stream: Tensor, cache, positions: Tensor, micro: int,
                    chunk_tokens: int, device: torch.device) -> float:
    """Forward + backward of one training batch in micro-batches of ``micro`` tokens with
    gradient accumulation: the gradient equals that of the whole batch (each part's
    mean loss weighted by its share).  Returns the batch's mean loss (nats)."""
    total = 0.0
    n = positions.shape[0]
    for start in range(0, n, micro):
        pos = positions[start : start + micro]
        ctx, x, y = _batch(stream, cache, pos, token_input, device)
        loss = TiedCrossEntropy.apply(block(ctx, x), token_input.weight, y, chunk_tokens)
        (loss * (pos.shape[0] / n)).backward()
        total += float(loss.detach()) * pos.shape[0]
    return total / n


@dataclass
class Phase2Config:
    """Phase 2 hyper-parameters (SPEC §7 defaults)."""

    max_epochs: int = 20
    patience: int = 1
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    batch_size: int = 1024
    eval_batch_size: int = 4096
    chunk_tokens: int = 32

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "Phase2Config":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in cfg.items() if k in known and v is not None})


def _batch(stream: Tensor, cache: np.ndarray | Tensor, positions: Tensor, token_input: TokenInput, device: torch.device):
    ctx = cache[positions] if isinstance(cache, Tensor) else torch.from_numpy(np.asarray(cache[positions.cpu().numpy()]))
    return ctx.to(device, non_blocking=True), token_input(stream, positions), stream[positions + 1]


def evaluate(
    block: TokenBlock,
    token_input: TokenInput,
    stream: Tensor,
    cache: np.ndarray | Tensor,
    cfg: Phase2Config,
) -> dict[str, float]:
    """Token-weighted mean NLL, perplexity and top-1 accuracy over all ``n - 1`` targets.

    Args:
        stream: ``[n]`` int64 token ids (device).
        cache: ``[n, L, d_c]`` contexts (``cache[i]`` = context produced at token ``i-1``).

    Returns:
        ``{"loss" (nats), "ppl", "accuracy", "tokens"}``.
    """
    block.eval()
    device = stream.device
    n_targets = stream.shape[0] - 1
    nll, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, n_targets, cfg.eval_batch_size):
            pos = torch.arange(start, min(start + cfg.eval_batch_size, n_targets), device=device)
            ctx, x, y = _batch(stream, cache, pos, token_input, device)
            b_nll, b_correct = tied_nll_and_correct(block(ctx, x), token_input.weight, y, cfg.chunk_tokens)
            nll += b_nll
            correct += b_correct
    loss = nll / n_targets
    return {"loss": loss, "ppl": perplexity(loss), "accuracy": correct / n_targets, "tokens": n_targets}


def train_phase2(
    block: TokenBlock,
    token_input: TokenInput,
    train_stream: Tensor,
    train_cache: np.ndarray | Tensor,
    val_stream: Tensor,
    val_cache: np.ndarray | Tensor,
    cfg: Phase2Config,
    *,
    seed: int = 0,
    run_name: str = "",
    on_batch: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: CheckpointSpec | None = None,
    on_oom: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the TokenBlock with Adam, gradient clipping and early stopping (SPEC §7).

    Each epoch visits every training position once in a seeded random order, then
    evaluates the whole validation stream.  Training stops when validation loss has not
    improved for ``cfg.patience`` epochs or after ``cfg.max_epochs``; the block is left
    with the weights of the best epoch.  The reported validation PPL is the best
    epoch's, chosen on this same validation set (as the source did).

    With ``checkpoint``, the state after every ``checkpoint.every`` epochs is saved and a
    matching checkpoint is resumed (same final numbers as an uninterrupted run).

    Out of memory (GPU): the failing step is redone in micro-batches of half the size
    with gradient accumulation (the same optimizer step), halving again until it fits;
    ``on_oom`` is called with each new micro-batch size, which is kept for later steps.

    Returns:
        ``(history, summary)``: per epoch ``train_loss``/``train_ppl`` (mean over the
        epoch's batches), ``val_loss``/``val_ppl``/``val_accuracy``, ``tokens_per_s``;
        summary ``best_epoch``, ``val_ppl``, ``val_accuracy``, ``train_ppl``, ``epochs``.

    Raises:
        TrainingDivergedError: a NaN/Inf loss.
    """
    device = train_stream.device
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(block.parameters(), lr=cfg.learning_rate)
    n_targets = train_stream.shape[0] - 1
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = copy.deepcopy(block.state_dict())
    bad_epochs = 0
    last_finite: float | None = None
    first_epoch, resumed_from = 1, None
    micro = cfg.batch_size  # tokens per forward/backward; halves on GPU out-of-memory
    loaded = load_checkpoint(checkpoint.path, checkpoint.fingerprint) if checkpoint else None
    if loaded:
        tensors, st = loaded
        block.load_state_dict(unprefixed("model", tensors))
        optimizer_from_tensors(optimizer, tensors, st["optimizer"])
        gen.set_state(tensors["rng"])
        history, best, bad_epochs, last_finite = st["history"], st["best"], st["bad_epochs"], st["last_finite"]
        best_state = {k: v.to(device) for k, v in unprefixed("best", tensors).items()}
        first_epoch = resumed_from = st["epoch"] + 1
    for epoch in range(first_epoch, cfg.max_epochs + 1):
        block.train()
        order = torch.randperm(n_targets, generator=gen).to(device)
        t0 = time.perf_counter()
        loss_sum = 0.0
        for step, start in enumerate(range(0, n_targets, cfg.batch_size)):
            pos = order[start : start + cfg.batch_size]
            while True:
                optimizer.zero_grad(set_to_none=True)
                try:
                    value = accumulate_step(block, token_input, train_stream, train_cache, pos, micro, cfg.chunk_tokens, device)
                    break
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not _is_oom(err) or micro <= 1:
                        raise
                    micro = max(1, micro // 2)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if on_oom is not None:
                        on_oom(micro)
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"Phase 2 {run_name}: non-finite loss at epoch {epoch}, batch {step}; "
                    f"last finite batch loss {last_finite}"
                )
            last_finite = value
            torch.nn.utils.clip_grad_norm_(block.parameters(), cfg.grad_clip)
            optimizer.step()
            loss_sum += value * pos.shape[0]
            if on_batch is not None:
                on_batch(pos.shape[0])
        train_seconds = time.perf_counter() - t0
        val = evaluate(block, token_input, val_stream, val_cache, cfg)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / n_targets,
            "train_ppl": perplexity(loss_sum / n_targets),
            "val_loss": val["loss"],
            "val_ppl": val["ppl"],
            "val_accuracy": val["accuracy"],
            "train_seconds": train_seconds,
            "tokens_per_s": n_targets / train_seconds,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if best is None or record["val_loss"] < best["val_loss"]:
            best, bad_epochs = record, 0
            best_state = copy.deepcopy(block.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
        if checkpoint and epoch % checkpoint.every == 0 and epoch < cfg.max_epochs:
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            save_checkpoint(checkpoint.path, {
                **prefixed("model", block.state_dict()), **opt_tensors, **prefixed("best", best_state), "rng": gen.get_state(),
            }, {"epoch": epoch, "optimizer": opt_meta, "history": history, "best": best, "bad_epochs": bad_epochs,
                "last_finite": last_finite}, checkpoint.fingerprint)
            maybe_inject_fault("phase2", epoch)
    block.load_state_dict(best_state)
    assert best is not None
    summary = {
        "best_epoch": best["epoch"],
        "epochs": len(history),
        "stopped_by": "early_stopping" if len(history) < cfg.max_epochs else "max_epochs",
        "resumed_from_epoch": resumed_from,
        "micro_batch_size": micro,
        "val_loss": best["val_loss"],
        "val_ppl": best["val_ppl"],
        "val_accuracy": best["val_accuracy"],
        "train_ppl": best["train_ppl"],
        "train_tokens": n_targets,
        "val_tokens": val_stream.shape[0] - 1,
        "tokens_per_s": n_targets * len(history) / sum(r["train_seconds"] for r in history),
        "train_seconds": sum(r["train_seconds"] for r in history),
    }
    return history, summary
