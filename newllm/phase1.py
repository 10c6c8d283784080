"""Phase 1: CVFP fixed-point training of the ContextBlock (docs/method.md §4).

The ContextBlock is the map ``F``; the solvers of :mod:`newllm.solvers` iterate it over
the token stream (torchdeq's split of map and solver).  Training sweeps carry gradients
and so run here, batch by batch; every no-grad solve (dev sweeps, the cache, the
diagnostics) goes through the solver registry.  A *Jacobi sweep* computes, for all positions
``i`` at once (in batches),

    C^k_i = F(C^{k-1}_{i-1}, x̃_i),   C^{k-1}_{-1} = 0,

i.e. each token uses the previous iteration's context of the previous token.  Its fixed
point is the sequential recurrence ``c_i = F(c_{i-1}, x̃_i)`` from ``c_{-1} = 0``; after
``k`` sweeps position ``i`` is exact for ``i < k`` (tested).  Token 0 reads the zero
context (not the wrapped-around last context of the source) so that training, the
sequential recurrence and the context cache of docs/method.md §6 (:mod:`newllm.context_cache`)
all agree.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from newllm.checkpoint import CheckpointSpec, TrainState
from newllm.config_fields import Phase1Fields
from newllm.losses import phase1_loss
from newllm.metrics import ER_MAX_ROWS, convergence_counts, effective_rank, format_rate
from newllm.model import ContextBlock, TokenInput
from newllm.runtime import autocast
from newllm.solvers import INPUT_CACHE_MAX_ELEMENTS, StreamMap, embed_windows
from newllm.training import TrainingDivergedError, TrainResult, check_finite, config_from_dict  # noqa: F401


@dataclass
class Phase1Config(Phase1Fields):
    """Phase 1 hyper-parameters (docs/method.md §4): the fields of the schema's ``phase1``
    section (:class:`newllm.config_fields.Phase1Fields`, generated from it), plus
    ``er_max_rows`` (docs/method.md §5, not a config key)."""

    er_max_rows: int = ER_MAX_ROWS
    """Rows sampled for the Effective Rank of a context matrix (:func:`newllm.metrics.effective_rank`)."""

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "Phase1Config":
        """From a resolved ``phase1`` config section (unknown keys ignored, ``None`` = default)."""
        return config_from_dict(cls, cfg)


def previous_contexts(contexts: Tensor, positions: Tensor) -> Tensor:
    """``contexts[i-1]`` for each ``i`` in ``positions`` (zero context for ``i = 0``).

    Shapes: ``contexts`` ``[n, d_c]``, ``positions`` ``[B]`` -> ``[B, d_c]``.
    """
    prev = contexts[(positions - 1).clamp(min=0)]
    return prev * (positions > 0).unsqueeze(-1).to(prev.dtype)


def jacobi_sweep(block: ContextBlock, token_input: TokenInput, stream: Tensor, contexts: Tensor, batch_size: int) -> Tensor:
    """One no-grad Jacobi sweep ``C^k_i = F(C^{k-1}_{i-1}, x̃_i)``: ``[n, d_c]`` -> ``[n, d_c]``
    (the final layer of :meth:`newllm.solvers.StreamMap.sweep`)."""
    return StreamMap(block, token_input, stream, batch_size).sweep(contexts)[:, -1]


def equal_batches(n: int, batch_size: int, device: torch.device | str = "cpu") -> list[Tensor]:
    """Positions ``0..n-1`` in ``ceil(n / batch_size)`` consecutive batches of (nearly)
    equal size (sizes differ by at most one), so no batch is a 1-token remainder: ODCM and
    WMSE divide by ``B - 1``, and a tiny batch would get an outsized MCDL gradient.

    Returns:
        a list of ``[B_k]`` int64 tensors.
    """
    num = max(1, math.ceil(n / batch_size))
    return list(torch.arange(n, device=device).tensor_split(num))


class ConvergenceRateStop:
    """Stop once the train convergence rate reaches ``target`` (docs/method.md §4), never before
    ``min_iterations``.  The trained weights are the last ones."""

    name = "convergence_rate"

    def __init__(self, target: float, min_iterations: int) -> None:
        self.target, self.min_iterations = target, min_iterations
        self.stopped_by: str | None = None
        self.best_state = None
        self.best_iteration = 0

    def update(self, record: dict[str, Any], state_fn: Callable[[], dict]) -> bool:
        self.best_iteration = record["iteration"]
        if record["iteration"] >= self.min_iterations and record["convergence_rate"] >= self.target:
            self.stopped_by = self.name
        return self.stopped_by is not None

    def state_dict(self) -> dict[str, Any]:
        return {"stopped_by": self.stopped_by, "best_iteration": self.best_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopped_by, self.best_iteration = state["stopped_by"], state["best_iteration"]


class ValERStop:
    """Early stop on dev Effective Rank (docs/method.md §4 option): stop when it has not improved for
    ``patience`` iterations; keep the best iteration's weights.  Iterations before
    ``min_iterations`` are no candidates (the random start's ER is an artefact, like
    "100 % converged at iteration 2")."""

    name = "val_er"

    def __init__(self, patience: int, min_iterations: int) -> None:
        self.patience, self.min_iterations = patience, min_iterations
        self.best_er, self.best_iteration, self.stale = -math.inf, 0, 0
        self.best_state = None
        self.stopped_by: str | None = None

    def update(self, record: dict[str, Any], state_fn: Callable[[], dict]) -> bool:
        if record["iteration"] < self.min_iterations:
            return False
        if record["val_effective_rank"] > self.best_er:
            self.best_er, self.best_iteration, self.stale = record["val_effective_rank"], record["iteration"], 0
            self.best_state = copy.deepcopy(state_fn())
        else:
            self.stale += 1
        if self.stale >= self.patience:
            self.stopped_by = self.name
        return self.stopped_by is not None

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best_er", "best_iteration", "stale", "stopped_by")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


STOP_RULES = {
    "convergence_rate": lambda cfg: ConvergenceRateStop(cfg.stop_convergence_rate, cfg.min_iterations),
    "val_er": lambda cfg: ValERStop(cfg.er_patience, cfg.min_iterations),
}
"""Phase 1 stop rules by ``phase1.stop_rule`` (never before ``min_iterations``):
``convergence_rate`` (train rate reaches ``stop_convergence_rate``; last weights) or
``val_er`` (dev ER has not improved for ``er_patience`` iterations; best weights)."""


def training_sweep(
    block: ContextBlock,
    token_input: TokenInput,
    train: "StreamState",
    cfg: "Phase1Config",
    gen: torch.Generator,
    precision: str = "fp32",
) -> tuple[Tensor, Tensor]:
    """One Jacobi sweep with gradients (docs/method.md §4) over ``train``'s batches from its contexts
    ``C^{k-1}``: per batch ``L = (1-w)·MSE(C^k, C^{k-1}) + w·D(C^k)`` weighted by the batch's
    share of tokens, gradients accumulated over the sweep; context noise drawn from ``gen``.
    ``bf16``: the ContextBlock forward under ``torch.autocast``; its output is cast back to
    float32 before the loss, so losses and the carried contexts stay float32.

    Returns:
        ``(new_contexts [n, d_c] detached, sums [3] = (total, cvfp, diversity) token-weighted
        means)``; one host sync per sweep, none per batch.
    """
    stream, contexts = train.stream, train.contexts
    n = stream.shape[0]
    new_contexts = torch.empty_like(contexts)
    sums = torch.zeros(3, dtype=torch.float64, device=contexts.device)
    previous = torch.cat([contexts.new_zeros(1, contexts.shape[1]), contexts[:-1]])  # [n, d_c]: C_{i-1}, C_{-1} = 0
    for start, end in train.bounds:  # batches are consecutive: slices, not gathers
        prev = previous[start:end]
        if cfg.context_noise > 0:
            prev = prev + cfg.context_noise * torch.randn(prev.shape, generator=gen).to(prev.device)
        with autocast(contexts.device, precision):
            out = block(prev, train.token_windows(token_input, start, end))[:, -1]  # [B, d_c]
        out = out.float()  # no-op in fp32
        total, cvfp, div = phase1_loss(out, contexts[start:end], cfg.dist_reg_weight, cfg.diversity)
        share = (end - start) / n
        (total * share).backward()
        sums += torch.stack([total.detach(), cvfp.detach(), div.detach()]).double() * share
        new_contexts[start:end] = out.detach()
    return new_contexts, sums


def convergence_record(new: Tensor, old: Tensor, threshold: float, prefix: str = "") -> dict[str, Any]:
    """``converged``/``tokens``/``convergence_rate``/``convergence`` (rate with counts) of
    ``[n, d_c]`` contexts against the previous iterate (docs/method.md §4), keys prefixed."""
    conv, tokens = convergence_counts(new, old, threshold)
    return {
        f"{prefix}converged": conv,
        f"{prefix}tokens": tokens,
        f"{prefix}convergence_rate": conv / tokens,
        f"{prefix}convergence": format_rate(conv, tokens),
    }


def measure_sweep(
    block: ContextBlock,
    token_input: TokenInput,
    stream: Tensor,
    contexts: Tensor,
    batches: list[Tensor],
    cfg: "Phase1Config",
    seed: int,
    prefix: str = "",
) -> tuple[Tensor, dict[str, Any]]:
    """One no-grad Jacobi sweep with the current weights: losses, convergence (with
    counts) and Effective Rank of the new contexts — what a summary reports for the weights
    that are saved."""
    n = stream.shape[0]
    new = torch.empty_like(contexts)
    sums = torch.zeros(3, dtype=torch.float64, device=contexts.device)
    with torch.no_grad():
        for pos in batches:
            out = block(previous_contexts(contexts, pos), token_input(stream, pos))[:, -1]
            total, cvfp, div = phase1_loss(out, contexts[pos], cfg.dist_reg_weight, cfg.diversity)
            sums += torch.stack([total, cvfp, div]).double() * (pos.shape[0] / n)
            new[pos] = out
    total, cvfp, div = sums.tolist()
    return new, {
        f"{prefix}total_loss": total,
        f"{prefix}cvfp_loss": cvfp,
        f"{prefix}diversity_loss": div,
        **convergence_record(new, contexts, cfg.convergence_threshold, prefix),
        f"{prefix}effective_rank": effective_rank(new, cfg.er_max_rows, seed),
    }


@dataclass
class StreamState:
    """A stream being trained on or watched: token ids ``[n]``, its equal batches (and their
    ``bounds``, ``(start, end)`` pairs), its current contexts ``C^k`` ``[n, d_c]``
    (detached; they carry over between iterations) and, optionally, every token's ``x̃``
    ``[n, N_in·d_e]`` embedded once."""

    stream: Tensor
    batches: list[Tensor]
    contexts: Tensor
    inputs: Tensor | None = None

    def __post_init__(self) -> None:
        # (start, end) of each batch (equal_batches are consecutive ranges), read once
        self.bounds = [(int(b[0]), int(b[-1]) + 1) for b in self.batches]

    def token_windows(self, token_input: TokenInput, start: int, end: int) -> Tensor:
        """``x̃`` of positions ``start..end-1``, ``[end - start, N_in·d_e]``: a slice of
        ``inputs`` (embedded once per run) when there are any, else embedded now."""
        if self.inputs is not None:
            return self.inputs[start:end]
        return token_input(self.stream, torch.arange(start, end, device=self.stream.device))


def start_stream(
    stream: Tensor,
    context_dim: int,
    cfg: Phase1Config,
    gen: torch.Generator,
    device: torch.device,
    token_input: TokenInput | None = None,
) -> StreamState:
    """``C^0 = init_std·N(0, I)`` drawn from ``gen`` (CPU) and moved to ``device``, with the
    stream's batches; with ``token_input``, every ``x̃`` embedded once (frozen embeddings:
    the same rows every sweep) when ``n · N_in·d_e`` is at most
    :data:`newllm.solvers.INPUT_CACHE_MAX_ELEMENTS`."""
    contexts = (cfg.init_std * torch.randn(stream.shape[0], context_dim, generator=gen)).to(device)
    state = StreamState(stream, equal_batches(stream.shape[0], cfg.batch_size, device), contexts)
    if token_input is not None:
        state.inputs = embed_windows(token_input, stream, INPUT_CACHE_MAX_ELEMENTS)
    return state


@dataclass
class Phase1Run:
    """What one Phase 1 iteration reads and updates: the map, the optimizer, the context
    noise generator, the train stream, the optional dev stream (with its solver map) and
    the training sweeps' precision (``fp32`` | ``bf16``)."""

    block: ContextBlock
    token_input: TokenInput
    cfg: Phase1Config
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    seed: int
    train: StreamState
    dev: StreamState | None = None
    dev_map: StreamMap | None = None
    precision: str = "fp32"

    def needs_er(self, iteration: int) -> bool:
        """Effective Rank is measured every ``er_every`` iterations, at the last, and always for ``val_er``."""
        cfg = self.cfg
        return cfg.stop_rule == "val_er" or iteration % cfg.er_every == 0 or iteration == cfg.max_iterations

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """The contexts and the noise RNG, saved beside the weights so a resume is exact."""
        extra = {"contexts": self.train.contexts, "rng": self.gen.get_state()}
        if self.dev is not None:
            extra["val_contexts"] = self.dev.contexts
        return extra

    def restore(self, tensors: dict[str, Tensor]) -> None:
        """Undo :meth:`checkpoint_tensors` (contexts moved to the train stream's device)."""
        device = self.train.stream.device
        self.train.contexts = tensors["contexts"].to(device)
        if self.dev is not None:
            self.dev.contexts = tensors["val_contexts"].to(device)
        self.gen.set_state(tensors["rng"])


def start_phase1(
    block: ContextBlock,
    token_input: TokenInput,
    stream: Tensor,
    val_stream: Tensor | None,
    cfg: Phase1Config,
    seed: int,
    precision: str = "fp32",
) -> Phase1Run:
    """Check the stop rule, draw the start contexts (train from ``seed``, dev from ``seed + 1``)
    and build the Adam optimizer."""
    if cfg.stop_rule not in STOP_RULES:
        raise ValueError(f"phase1.stop_rule {cfg.stop_rule!r} is not one of {sorted(STOP_RULES)}")
    if cfg.stop_rule == "val_er" and val_stream is None:
        raise ValueError("phase1.stop_rule 'val_er' needs the dev stream")
    device = stream.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    train = start_stream(stream, block.context_dim, cfg, gen, device, token_input)
    run = Phase1Run(block, token_input, cfg, None, gen, seed, train)
    run.precision = precision
    if val_stream is not None:
        val_gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        run.dev = start_stream(val_stream, block.context_dim, cfg, val_gen, device)
        run.dev_map = StreamMap(block, token_input, val_stream, cfg.batch_size)
    run.optimizer = torch.optim.Adam(block.parameters(), lr=cfg.learning_rate)
    return run


def dev_sweep(run: Phase1Run, needs_er: bool) -> dict[str, Any]:
    """One no-grad Jacobi sweep of the dev stream with the weights of this iteration's
    training sweep (before the step): ``val_`` convergence and, if asked, Effective Rank."""
    dev, cfg = run.dev, run.cfg
    new_val = run.dev_map.sweep(dev.contexts)[:, -1]
    record = convergence_record(new_val, dev.contexts, cfg.convergence_threshold, "val_")
    dev.contexts = new_val
    if needs_er:
        record["val_effective_rank"] = effective_rank(dev.contexts, cfg.er_max_rows, run.seed)
    return record


def phase1_iteration(run: Phase1Run, iteration: int, what: str, last_finite: Any) -> tuple[dict[str, Any], dict | None]:
    """One iteration, one Adam step: training sweep → finite check → dev sweep → clip →
    step → train convergence and Effective Rank.

    Returns:
        ``(record, state_before_step)``; the pre-step weights only for ``val_er``, whose
        dev measurement they produced.

    Raises:
        TrainingDivergedError: a NaN/Inf loss (``what`` names run and iteration).
    """
    block, cfg, train = run.block, run.cfg, run.train
    t0 = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    new_contexts, sums = training_sweep(block, run.token_input, train, cfg, run.gen, run.precision)
    total, cvfp, div = sums.tolist()
    check_finite(total, what, last_finite)
    needs_er = run.needs_er(iteration)
    record: dict[str, Any] = {"iteration": iteration, "total_loss": total, "cvfp_loss": cvfp, "diversity_loss": div}
    if run.dev is not None:  # same weights as this sweep's train contexts
        record.update(dev_sweep(run, needs_er))
    state_before_step = copy.deepcopy(block.state_dict()) if cfg.stop_rule == "val_er" else None
    record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(block.parameters(), cfg.grad_clip))
    run.optimizer.step()
    record.update(convergence_record(new_contexts, train.contexts, cfg.convergence_threshold))
    train.contexts = new_contexts
    if needs_er:
        record["effective_rank"] = effective_rank(train.contexts, cfg.er_max_rows, run.seed)
    record["seconds"] = time.perf_counter() - t0
    record["tokens_per_s"] = train.stream.shape[0] / record["seconds"]
    return record, state_before_step


def final_measurement(run: Phase1Run) -> tuple[Tensor, dict[str, Any]]:
    """One no-grad sweep of each stream with the final weights (what the summary reports):
    the train contexts ``[n, d_c]`` and the measures, dev ones ``val_``-prefixed (no losses)."""
    block, token_input, cfg, train = run.block, run.token_input, run.cfg, run.train
    final_contexts, final = measure_sweep(block, token_input, train.stream, train.contexts, train.batches, cfg, run.seed)
    if run.dev is not None:
        dev = run.dev
        _, val_final = measure_sweep(block, token_input, dev.stream, dev.contexts, dev.batches, cfg, run.seed, "val_")
        final.update({k: v for k, v in val_final.items() if "loss" not in k})
    return final_contexts, final


def phase1_summary(
    history: list[dict[str, Any]],
    final: dict[str, Any],
    stopper: Any,
    cfg: Phase1Config,
    resumed: dict | None,
    n: int,
    context_dim: int,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The run's summary (docs/method.md §4): how it stopped and the final weights' measures."""
    stopped_by = stopper.stopped_by or "max_iterations"
    seconds = sum(r["seconds"] for r in history)
    return {
        "iterations": history[-1]["iteration"],
        "best_iteration": stopper.best_iteration if cfg.stop_rule == "val_er" else history[-1]["iteration"],
        "stop_rule": cfg.stop_rule,
        "stopped_by": stopped_by,
        "stop_rule_met": stopped_by != "max_iterations",
        "undertrained": stopped_by == "max_iterations",
        "resumed_from_iteration": resumed["iteration"] + 1 if resumed else None,
        "final_cvfp_loss": final["cvfp_loss"],
        "final_diversity_loss": final["diversity_loss"],
        "train_convergence_rate": final["convergence_rate"],
        "train_convergence": final["convergence"],
        "train_effective_rank": final["effective_rank"],
        "train_effective_rank_pct": 100.0 * final["effective_rank"] / context_dim,
        **{k: final[k] for k in ("val_convergence_rate", "val_convergence", "val_effective_rank") if k in final},
        "seconds": seconds,
        "tokens_per_s": n * len(history) / seconds,
        "precision": precision,
    }


def untrained_summary(
    block: ContextBlock, token_input: TokenInput, stream: Tensor, dev_stream: Tensor, cfg: Phase1Config, seed: int
) -> dict[str, Any]:
    """Phase 1's summary of a ContextBlock measured at its initialisation, for the
    ``untrained_context`` control (docs/method.md §10.1): one sweep of the training and of
    the dev stream from the seeded start ``C^0 = init_std·N(0, I)``, measured as a trained
    run's final weights are (:func:`measure_sweep`); no iteration is run.

    Args:
        stream, dev_stream: ``[n]`` and ``[m]`` int64 token ids on the block's device.

    Returns:
        the summary keys an untrained block has: convergence, convergence rate and
        effective rank of both streams, the CVFP and diversity losses of the training
        sweep, ``stopped_by`` ``"untrained"`` and zero iterations.
    """
    summary: dict[str, Any] = {
        "iterations": 0,
        "best_iteration": 0,
        "stop_rule": "none (untrained_context)",
        "stopped_by": "untrained",
        "stop_rule_met": True,
        "undertrained": False,
        "seconds": 0.0,
        "tokens_per_s": None,
    }
    for tag, s in (("train_", stream), ("val_", dev_stream)):
        gen = torch.Generator().manual_seed(seed)
        start = (cfg.init_std * torch.randn(s.shape[0], block.context_dim, generator=gen)).to(s.device)
        _, m = measure_sweep(block, token_input, s, start, equal_batches(s.shape[0], cfg.batch_size, s.device), cfg, seed)
        summary.update({f"{tag}{key}": m[key] for key in ("convergence_rate", "convergence", "effective_rank")})
        if tag == "train_":
            summary.update(
                final_cvfp_loss=m["cvfp_loss"],
                final_diversity_loss=m["diversity_loss"],
                train_effective_rank_pct=100.0 * m["effective_rank"] / block.context_dim,
            )
    return summary


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
    precision: str = "fp32",
) -> TrainResult:
    """Train the ContextBlock by CVFP (docs/method.md §4).

    Loop: :func:`phase1_iteration` (one Adam step) → stop rule (``cfg.stop_rule``, one of
    :data:`STOP_RULES`: ``convergence_rate`` keeps the last weights, ``val_er`` the best;
    ending at ``max_iterations`` flags the run ``undertrained``) → checkpoint; then
    :func:`final_measurement` and :func:`phase1_summary` describe the saved weights.

    Args:
        stream: ``[n]`` int64 token ids on the training device.
        val_stream: ``[m]`` dev token ids (required by ``stop_rule='val_er'``).
        seed: seeds ``C^0 = init_std·N(0, I)`` and the context noise.
        on_iteration: called with each iteration's record (progress logging).
        checkpoint: save every ``checkpoint.every`` iterations and resume from a
            matching checkpoint (same final numbers as an uninterrupted run).
        precision: ``fp32`` or ``bf16`` (:func:`newllm.runtime.resolve_precision`) of the training
            sweeps (autocast forward, float32 losses); dev sweeps and the final measurement stay float32.

    Returns:
        :class:`TrainResult`; ``extra["contexts"]``: the final weights' train contexts ``[n, d_c]``.

    Raises:
        TrainingDivergedError: a NaN/Inf loss.
        ValueError: unknown stop rule, or ``val_er`` without ``val_stream``.
    """
    run = start_phase1(block, token_input, stream, val_stream, cfg, seed, precision)
    stopper = STOP_RULES[cfg.stop_rule](cfg)
    state = TrainState(block, run.optimizer, stopper)
    resumed = state.load(checkpoint)
    if resumed:
        run.restore(state.extra_tensors)
    block.train()
    for iteration in range(resumed["iteration"] + 1 if resumed else 1, cfg.max_iterations + 1):
        what = f"Phase 1 {run_name}, iteration {iteration}"
        record, state_before_step = phase1_iteration(run, iteration, what, state.history[-1:] or None)
        state.history.append(record)
        if on_iteration is not None:
            on_iteration(record)
        # the dev contexts of this iteration came from the pre-step weights
        if stopper.update(record, lambda: state_before_step):
            break
        if checkpoint and iteration % checkpoint.every == 0 and iteration < cfg.max_iterations:
            state.save(checkpoint, {"iteration": iteration}, run.checkpoint_tensors())
    if stopper.best_state is not None:
        block.load_state_dict(stopper.best_state)
    block.eval()
    final_contexts, final = final_measurement(run)
    summary = phase1_summary(state.history, final, stopper, cfg, resumed, stream.shape[0], block.context_dim, precision)
    return TrainResult(history=state.history, summary=summary, extra={"contexts": final_contexts})
