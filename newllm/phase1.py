"""Phase 1: CVFP fixed-point training of the ContextBlock, and context solvers (SPEC §4, §6).

The ContextBlock is the map ``F``; the solver iterates it over the token stream
(torchdeq's split of map and solver).  A *Jacobi sweep* computes, for all positions
``i`` at once (in batches),

    C^k_i = F(C^{k-1}_{i-1}, x̃_i),   C^{k-1}_{-1} = 0,

i.e. each token uses the previous iteration's context of the previous token.  Its fixed
point is the sequential recurrence ``c_i = F(c_{i-1}, x̃_i)`` from ``c_{-1} = 0``; after
``k`` sweeps position ``i`` is exact for ``i < k`` (tested).  Token 0 reads the zero
context (not the wrapped-around last context of the source) so that training, the
sequential recurrence and the context cache of SPEC §6 all agree.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

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
from newllm.losses import phase1_loss
from newllm.metrics import ER_MAX_ROWS, convergence_counts, effective_rank, format_rate
from newllm.model import ContextBlock, TokenInput


class TrainingDivergedError(FloatingPointError):
    """A loss became NaN/Inf; the message names phase, run, step and the last finite values."""


@dataclass
class Phase1Config:
    """Phase 1 hyper-parameters (SPEC §4 defaults)."""

    max_iterations: int = 60
    min_iterations: int = 5
    convergence_threshold: float = 0.03
    stop_convergence_rate: float = 0.99
    dist_reg_weight: float = 0.9
    diversity: str = "mcdl"
    learning_rate: float = 2e-3
    grad_clip: float = 2.0
    batch_size: int = 4096
    context_noise: float = 0.0
    init_std: float = 0.01
    er_max_rows: int = ER_MAX_ROWS
    stop_rule: str = "convergence_rate"
    er_patience: int = 3

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "Phase1Config":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in cfg.items() if k in known})


def previous_contexts(contexts: Tensor, positions: Tensor) -> Tensor:
    """``contexts[i-1]`` for each ``i`` in ``positions`` (zero context for ``i = 0``).

    Shapes: ``contexts`` ``[n, d_c]``, ``positions`` ``[B]`` -> ``[B, d_c]``.
    """
    prev = contexts[(positions - 1).clamp(min=0)]
    return prev * (positions > 0).unsqueeze(-1).to(prev.dtype)


def jacobi_sweep(
    block: ContextBlock,
    token_input: TokenInput,
    stream: Tensor,
    contexts: Tensor,
    batch_size: int,
    all_layers: bool = False,
) -> Tensor:
    """One Jacobi sweep without gradients: ``C^k_i = F(C^{k-1}_{i-1}, x̃_i)`` for all ``i``.

    Args:
        stream: ``[n]`` int64 token ids.
        contexts: ``[n, d_c]`` previous iterate ``C^{k-1}``.
        all_layers: return every layer's output instead of the final context.

    Returns:
        ``[n, d_c]`` (or ``[n, L, d_c]`` with ``all_layers``).
    """
    n = stream.shape[0]
    shape = (n, block.num_layers, block.context_dim) if all_layers else (n, block.context_dim)
    out = torch.empty(shape, device=contexts.device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            pos = torch.arange(start, min(start + batch_size, n), device=stream.device)
            y = block(previous_contexts(contexts, pos), token_input(stream, pos))
            out[start : start + pos.shape[0]] = y if all_layers else y[:, -1]
    return out


def solve_contexts_jacobi(
    block: ContextBlock,
    token_input: TokenInput,
    stream: Tensor,
    max_sweeps: int = 200,
    tolerance: float = 1e-5,
    batch_size: int = 4096,
) -> tuple[Tensor, dict[str, Any]]:
    """Solve the recurrence by Jacobi sweeps from ``C^0 = 0`` until the residual is small.

    Stops when ``max_i mean_d (C^k_i - C^{k-1}_i)² < tolerance`` or after ``max_sweeps``.

    Returns:
        ``(outputs [n, L, d_c], info)`` where ``outputs[i]`` are token ``i``'s layer
        outputs and ``info`` has ``method``, ``sweeps``, ``max_residual``,
        ``mean_residual`` (mean squared change per element in the last sweep) and
        ``converged`` (bool).
    """
    n = stream.shape[0]
    contexts = torch.zeros(n, block.context_dim, device=stream.device)
    max_res = mean_res = math.inf
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        new = jacobi_sweep(block, token_input, stream, contexts, batch_size)
        per_token = (new - contexts).pow(2).mean(dim=-1)
        max_res, mean_res = float(per_token.max()), float(per_token.mean())
        contexts = new
        if max_res < tolerance:
            break
    outputs = jacobi_sweep(block, token_input, stream, contexts, batch_size, all_layers=True)
    info = {
        "method": "jacobi",
        "sweeps": sweeps,
        "tolerance": tolerance,
        "max_residual": max_res,
        "mean_residual": mean_res,
        "converged": bool(max_res < tolerance),
    }
    return outputs, info


def solve_contexts_sequential(block: ContextBlock, token_input: TokenInput, stream: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """The exact sequential recurrence ``c_i = F(c_{i-1}, x̃_i)``, ``c_{-1} = 0`` (one token at a time).

    Returns:
        ``(outputs [n, L, d_c], {"method": "sequential"})``.
    """
    n = stream.shape[0]
    outputs = torch.empty(n, block.num_layers, block.context_dim, device=stream.device)
    context = torch.zeros(1, block.context_dim, device=stream.device)
    with torch.no_grad():
        for i in range(n):
            y = block(context, token_input(stream, torch.tensor([i], device=stream.device)))
            outputs[i] = y[0]
            context = y[:, -1]
    return outputs, {"method": "sequential", "sweeps": 1, "converged": True}


def context_cache_from_outputs(outputs: Tensor) -> Tensor:
    """Shift layer outputs so token ``i`` sees the context produced at token ``i-1`` (SPEC §6).

    ``[n, L, d_c]`` -> ``[n, L, d_c]`` with row 0 the zero context.
    """
    cache = torch.zeros_like(outputs)
    cache[1:] = outputs[:-1]
    return cache


@dataclass
class Phase1Result:
    """What :func:`train_phase1` returns: per-iteration history, final contexts, summary."""

    history: list[dict[str, Any]]
    contexts: Tensor
    summary: dict[str, Any] = field(default_factory=dict)


STOP_RULES = ("convergence_rate", "val_er")


def train_phase1(
    block: ContextBlock,
    token_input: TokenInput,
    stream: Tensor,
    cfg: Phase1Config,
    *,
    val_stream: Tensor | None = None,
    seed: int = 0,
    run_name: str = "",
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: CheckpointSpec | None = None,
) -> Phase1Result:
    """Train the ContextBlock by CVFP (SPEC §4).

    Each iteration is one Jacobi sweep over the whole stream in batches of
    ``cfg.batch_size`` tokens.  Per batch: ``L = (1-w)·MSE(C^k, C^{k-1}) + w·D(C^k)``,
    weighted by the batch's share of tokens; gradients accumulate over the sweep, are
    clipped to ``cfg.grad_clip`` and applied by one Adam step.  The contexts carry over
    between iterations (detached).

    With ``val_stream`` the validation contexts are swept alongside (same weights, no
    gradient, carried over the same way), giving a validation convergence rate and
    Effective Rank per iteration.

    Stop rules (``cfg.stop_rule``), never before ``min_iterations``:
    ``convergence_rate`` stops once the train rate reaches ``stop_convergence_rate``;
    ``val_er`` stops when validation ER has not improved for ``er_patience`` iterations
    and restores the weights of the best iteration (only iterations from
    ``min_iterations`` on are candidates: the random start's ER is an artefact, like
    "100 % converged at iteration 2").  Both stop at ``max_iterations``.

    Args:
        stream: ``[n]`` int64 token ids on the training device.
        val_stream: ``[m]`` validation token ids (required by ``stop_rule='val_er'``).
        seed: seeds ``C^0 = init_std·N(0, I)`` and the context noise.
        on_iteration: called with each iteration's metrics (for progress logging).
        checkpoint: save every ``checkpoint.every`` iterations and resume from a
            matching checkpoint (same final numbers as an uninterrupted run).

    Returns:
        :class:`Phase1Result` with per-iteration ``cvfp_loss``, ``diversity_loss``,
        ``total_loss``, ``converged``/``tokens``/``convergence_rate``,
        ``effective_rank`` (and ``val_*`` counterparts), ``tokens_per_s``, ``seconds``.
        ``contexts`` are the last iteration's train contexts.

    Raises:
        TrainingDivergedError: a NaN/Inf loss.
        ValueError: unknown stop rule, or ``val_er`` without ``val_stream``.
    """
    if cfg.stop_rule not in STOP_RULES:
        raise ValueError(f"phase1.stop_rule {cfg.stop_rule!r} is not one of {STOP_RULES}")
    if cfg.stop_rule == "val_er" and val_stream is None:
        raise ValueError("phase1.stop_rule 'val_er' needs the validation stream")
    device = stream.device
    n = stream.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    contexts = (cfg.init_std * torch.randn(n, block.context_dim, generator=gen)).to(device)
    val_contexts = None
    if val_stream is not None:
        val_gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        val_contexts = (cfg.init_std * torch.randn(val_stream.shape[0], block.context_dim, generator=val_gen)).to(device)
    optimizer = torch.optim.Adam(block.parameters(), lr=cfg.learning_rate)
    history: list[dict[str, Any]] = []
    last_finite: dict[str, Any] = {}
    best_er, best_state, best_iteration, stale = -math.inf, None, 0, 0
    first_iteration, resumed_from = 1, None
    loaded = load_checkpoint(checkpoint.path, checkpoint.fingerprint) if checkpoint else None
    if loaded:
        tensors, st = loaded
        block.load_state_dict(unprefixed("model", tensors))
        optimizer_from_tensors(optimizer, tensors, st["optimizer"])
        contexts = tensors["contexts"].to(device)
        if val_contexts is not None:
            val_contexts = tensors["val_contexts"].to(device)
        gen.set_state(tensors["rng"])
        history, last_finite = st["history"], st["last_finite"]
        best_er, best_iteration, stale = st["best_er"], st["best_iteration"], st["stale"]
        best_state = unprefixed("best", tensors) or None
        first_iteration = resumed_from = st["iteration"] + 1
    block.train()
    stopped_by = None
    for iteration in range(first_iteration, cfg.max_iterations + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        new_contexts = torch.empty_like(contexts)
        sums = torch.zeros(3, dtype=torch.float64)
        for start in range(0, n, cfg.batch_size):
            pos = torch.arange(start, min(start + cfg.batch_size, n), device=device)
            prev = previous_contexts(contexts, pos)
            if cfg.context_noise > 0:
                prev = prev + cfg.context_noise * torch.randn(prev.shape, generator=gen).to(device)
            out = block(prev, token_input(stream, pos))[:, -1]  # [B, d_c]
            total, cvfp, div = phase1_loss(out, contexts[pos], cfg.dist_reg_weight, cfg.diversity)
            share = pos.shape[0] / n
            (total * share).backward()
            sums += torch.tensor([total.item(), cvfp.item(), div.item()], dtype=torch.float64) * share
            new_contexts[pos] = out.detach()
        if not torch.isfinite(sums).all():
            raise TrainingDivergedError(
                f"Phase 1 {run_name}: non-finite loss at iteration {iteration} "
                f"(total, cvfp, diversity = {sums.tolist()}); last finite values: {last_finite}"
            )
        val_record: dict[str, Any] = {}
        if val_stream is not None:  # same weights as this sweep's train contexts
            new_val = jacobi_sweep(block, token_input, val_stream, val_contexts, cfg.batch_size)
            v_conv, v_total = convergence_counts(new_val, val_contexts, cfg.convergence_threshold)
            val_contexts = new_val
            val_record = {
                "val_converged": v_conv,
                "val_tokens": v_total,
                "val_convergence_rate": v_conv / v_total,
                "val_convergence": format_rate(v_conv, v_total),
                "val_effective_rank": effective_rank(val_contexts, cfg.er_max_rows, seed),
            }
        grad_norm = float(torch.nn.utils.clip_grad_norm_(block.parameters(), cfg.grad_clip))
        state_before_step = copy.deepcopy(block.state_dict()) if cfg.stop_rule == "val_er" else None
        optimizer.step()
        converged, total_tokens = convergence_counts(new_contexts, contexts, cfg.convergence_threshold)
        contexts = new_contexts
        seconds = time.perf_counter() - t0
        record = {
            "iteration": iteration,
            "total_loss": float(sums[0]),
            "cvfp_loss": float(sums[1]),
            "diversity_loss": float(sums[2]),
            "grad_norm": grad_norm,
            "converged": converged,
            "tokens": total_tokens,
            "convergence_rate": converged / total_tokens,
            "convergence": format_rate(converged, total_tokens),
            "effective_rank": effective_rank(contexts, cfg.er_max_rows, seed),
            **val_record,
            "seconds": seconds,
            "tokens_per_s": n / seconds,
        }
        history.append(record)
        last_finite = {k: record[k] for k in ("iteration", "total_loss", "cvfp_loss", "diversity_loss")}
        if on_iteration is not None:
            on_iteration(record)
        stopped_by = None
        if cfg.stop_rule == "val_er" and iteration >= cfg.min_iterations:
            # the validation contexts of this iteration came from the pre-step weights; the
            # first min_iterations are not candidates: the random start's ER is an artefact
            if record["val_effective_rank"] > best_er:
                best_er, best_state, best_iteration, stale = record["val_effective_rank"], state_before_step, iteration, 0
            else:
                stale += 1
            if stale >= cfg.er_patience:
                stopped_by = "val_er"
        elif iteration >= cfg.min_iterations and record["convergence_rate"] >= cfg.stop_convergence_rate:
            stopped_by = "convergence_rate"
        if stopped_by:
            break
        if checkpoint and iteration % checkpoint.every == 0 and iteration < cfg.max_iterations:
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            tensors = {**prefixed("model", block.state_dict()), **opt_tensors, "contexts": contexts, "rng": gen.get_state()}
            if val_contexts is not None:
                tensors["val_contexts"] = val_contexts
            if best_state is not None:
                tensors.update(prefixed("best", best_state))
            save_checkpoint(checkpoint.path, tensors, {
                "iteration": iteration, "optimizer": opt_meta, "history": history, "last_finite": last_finite,
                "best_er": best_er, "best_iteration": best_iteration, "stale": stale,
            }, checkpoint.fingerprint)
            maybe_inject_fault("phase1", iteration)
    if cfg.stop_rule == "val_er" and best_state is not None:
        block.load_state_dict(best_state)
    block.eval()
    final = history[-1] if cfg.stop_rule != "val_er" else history[best_iteration - 1]
    summary = {
        "iterations": history[-1]["iteration"],
        "best_iteration": final["iteration"],
        "stop_rule": cfg.stop_rule,
        "stopped_by": stopped_by or "max_iterations",
        "resumed_from_iteration": resumed_from,
        "final_cvfp_loss": final["cvfp_loss"],
        "final_diversity_loss": final["diversity_loss"],
        "train_convergence_rate": final["convergence_rate"],
        "train_convergence": final["convergence"],
        "train_effective_rank": final["effective_rank"],
        "train_effective_rank_pct": 100.0 * final["effective_rank"] / block.context_dim,
        **{k: final[k] for k in ("val_convergence_rate", "val_convergence", "val_effective_rank") if k in final},
        "seconds": sum(r["seconds"] for r in history),
        "tokens_per_s": n * len(history) / sum(r["seconds"] for r in history),
    }
    return Phase1Result(history=history, contexts=contexts, summary=summary)
