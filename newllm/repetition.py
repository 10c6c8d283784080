"""The repetition (CVFPT) study (docs/method.md §9): does the context update reach fixed points on
repeated input, ``context("red" × n) ≈ context("red" × (n+1))``?

A phrase of ``cycle_length`` tokens is repeated ``repetitions`` times and run through the
*same* :class:`~newllm.model.ContextBlock` as the main pipeline, sequentially from the
zero context (``c_t = F(c_{t-1}, x̃_t)``, detached between tokens as in CVFP).  The
convergence loss is ``MSE(c_t, c_{t-L})`` for ``t ≥ L`` (``L`` = cycle_length, target
detached); an optional token cross-entropy (TokenBlock + tied head) is added with
``ce_weight`` (0 by default).

Protocols for the top-K evaluation (seeds/000): *sequential* trains a fresh model per
token (biased: every token sees a different initialisation), *round-robin* trains one
shared model with one batch per token per epoch, in token order (fair).

A model that "converges" by mapping every input to one vector is not a success: the
fixed points of different tokens are compared pairwise and a collapse onto one global
attractor is flagged (the failure the source found only later, distance ≈ 2e-6).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from newllm.config_fields import RepetitionFields
from newllm.model import ContextBlock, ModelConfig, TokenBlock, TokenInput, build_blocks, tied_logits
from newllm.solvers import unroll
from newllm.tokenizer import EOT_ID
from newllm.training import config_from_dict

CONVERGED_LOSS = RepetitionFields.converged_loss
"""A token counts as converged when its final convergence loss is below this (docs/method.md §9)."""


@dataclass
class RepetitionConfig(RepetitionFields):
    """Hyper-parameters of the repetition study's trainer: the fields of the schema's
    ``repetition`` section that it reads (:class:`newllm.config_fields.RepetitionFields`,
    generated from it); the stage and phrase counts are read by the study's rule."""

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "RepetitionConfig":
        """From the resolved ``repetition`` section (unknown keys ignored, ``None`` = default)."""
        return config_from_dict(cls, cfg)


# --------------------------------------------------------------------------- data
def frequent_phrases(stream: np.ndarray, length: int, count: int) -> list[tuple[int, ...]]:
    """The ``count`` most frequent ``length``-token phrases of a token stream (real text).

    Phrases that contain ``<|endoftext|>`` (sample boundaries) are skipped; ties are
    broken by the phrase's first occurrence.

    Raises:
        ValueError: ``length`` not in 1..4, or fewer distinct phrases than ``count``.
    """
    if not 1 <= length <= 4:
        raise ValueError(f"phrase length must be 1..4, got {length}")
    ids = np.asarray(stream, dtype=np.int64)
    n = ids.size - length + 1
    windows = np.stack([ids[i : i + n] for i in range(length)], axis=1)  # [n, length]
    windows = windows[(windows != EOT_ID).all(axis=1)]
    keys = np.zeros(len(windows), dtype=np.int64)
    for col in range(length):  # 50257**4 < 2**63: a unique integer per phrase
        keys = keys * 50257 + windows[:, col]
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if uniq.size < count:
        raise ValueError(f"only {uniq.size} distinct {length}-token phrases in the stream, {count} requested")
    order = np.lexsort((first, -counts))[:count]
    return [tuple(int(t) for t in windows[first[i]]) for i in order]


def repeated_sequences(phrases: Sequence[Sequence[int]], repetitions: int) -> Tensor:
    """``[P, repetitions·L]`` int64: each phrase (all of length L) repeated ``repetitions`` times."""
    lengths = {len(p) for p in phrases}
    if len(lengths) != 1:
        raise ValueError(f"phrases of one batch must share a length, got lengths {sorted(lengths)}")
    return torch.tensor([list(p) * repetitions for p in phrases], dtype=torch.long)


# --------------------------------------------------------------------------- forward
def run_contexts(block: ContextBlock, token_input: TokenInput, sequences: Tensor, grad: bool = True) -> tuple[Tensor, Tensor]:
    """Run the recurrence over a batch of sequences from the zero context.

    Each step is ``c_t = F(c_{t-1}.detach(), x̃_t)``: gradients reach ``F`` through one
    step only, as in CVFP.

    Args:
        sequences: ``[P, T]`` token ids (one row per sequence).

    Returns:
        ``(contexts [P, T, d_c], layer_outputs [P, T, L, d_c])``.
    """
    inputs = token_input.rows(sequences)  # [P, T, N_in·d_e], windows within each sequence
    context = torch.zeros(sequences.shape[0], block.context_dim, device=sequences.device)
    with torch.set_grad_enabled(grad):
        layers = unroll(block, inputs, context, truncate=True)
    return layers[:, :, -1], layers


def convergence_loss(contexts: Tensor, cycle_length: int) -> Tensor:
    """``MSE(c_t, c_{t-L})`` over ``t ≥ L`` (target detached), ``[P, T, d] -> scalar``."""
    return F.mse_loss(contexts[:, cycle_length:], contexts[:, :-cycle_length].detach())


def sequence_metrics(contexts: Tensor, cycle_length: int) -> dict[str, float]:
    """Per batch: ``convergence_loss`` (MSE to one cycle back), ``change_rate``
    (mean ‖c_t − c_{t−1}‖ over t ≥ 1), ``cyclic_distance`` (mean ‖c_t − c_{t−L}‖ over
    t ≥ L) and ``final_cyclic_distance`` (the last cycle only)."""
    with torch.no_grad():
        cyc = (contexts[:, cycle_length:] - contexts[:, :-cycle_length]).norm(dim=-1)
        return {
            "convergence_loss": float(convergence_loss(contexts, cycle_length)),
            "change_rate": float((contexts[:, 1:] - contexts[:, :-1]).norm(dim=-1).mean()),
            "cyclic_distance": float(cyc.mean()),
            "final_cyclic_distance": float(cyc[:, -1].mean()),
        }


def per_sequence_loss(contexts: Tensor, cycle_length: int) -> Tensor:
    """Convergence loss of each sequence separately, ``[P, T, d] -> [P]``."""
    diff = contexts[:, cycle_length:] - contexts[:, :-cycle_length]
    return diff.pow(2).mean(dim=(1, 2))


class RepetitionTrainer:
    """One ContextBlock (and, with ``ce_weight > 0``, a TokenBlock) trained on repeated phrases."""

    def __init__(
        self, block: ContextBlock, token_input: TokenInput, cfg: RepetitionConfig, token_block: TokenBlock | None = None
    ) -> None:
        self.block, self.token_input, self.cfg, self.token_block = block, token_input, cfg, token_block
        params = list(block.parameters()) + (
            list(token_block.parameters()) if token_block is not None and cfg.ce_weight > 0 else []
        )
        self.optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)

    def step(self, sequences: Tensor, cycle_length: int) -> dict[str, float]:
        """One optimizer step on a batch ``[P, T]``; returns the batch's metrics (pre-step)."""
        contexts, layers = run_contexts(self.block, self.token_input, sequences, grad=True)
        loss = convergence_loss(contexts, cycle_length)
        metrics = sequence_metrics(contexts, cycle_length)
        if self.cfg.ce_weight > 0 and self.token_block is not None:
            # predict token t+1 from x̃_t and every layer's context after processing token t,
            # F(c_{t-1}, x̃_t) (docs/method.md §6, as Phase 2 reads its cache); detached: CE trains the TokenBlock only
            contexts_after = layers[:, :-1].detach()  # [P, T-1, L, d_c]
            inputs = self.token_input.rows(sequences)[:, :-1]
            hidden = self.token_block(contexts_after.reshape(-1, *layers.shape[2:]), inputs.reshape(-1, inputs.shape[-1]))
            ce = F.cross_entropy(tied_logits(hidden, self.token_input.weight), sequences[:, 1:].reshape(-1))
            loss = loss + self.cfg.ce_weight * ce
            metrics["token_ce"] = float(ce.detach())
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"repetition: non-finite loss; last metrics {metrics}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # each block clipped by its own norm, so the CE term never changes the ContextBlock's step
        torch.nn.utils.clip_grad_norm_(self.block.parameters(), self.cfg.grad_clip)
        if self.cfg.ce_weight > 0 and self.token_block is not None:
            torch.nn.utils.clip_grad_norm_(self.token_block.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return metrics

    def evaluate(self, sequences: Tensor, cycle_length: int) -> tuple[Tensor, Tensor]:
        """Per-sequence convergence loss ``[P]`` and fixed point (last context) ``[P, d_c]``."""
        contexts, _ = run_contexts(self.block, self.token_input, sequences, grad=False)
        return per_sequence_loss(contexts, cycle_length), contexts[:, -1]


# --------------------------------------------------------------------------- staged training
def train_stages(
    trainer: RepetitionTrainer,
    phrases_by_stage: dict[int, list[tuple[int, ...]]],
    repetitions: int,
    epochs_per_stage: int,
    batch_size: int,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Stage ``s`` trains on phrases of ``s`` tokens (``cycle_length = s``) for
    ``epochs_per_stage`` epochs, each a pass over the stage's phrases in batches.

    Returns:
        One row per (stage, epoch): mean ``convergence_loss``, ``change_rate``,
        ``cyclic_distance``, ``final_cyclic_distance`` (pre-step, token-weighted over
        the epoch's batches), ``phrases``, ``seconds``.
    """
    rows = []
    for stage in sorted(phrases_by_stage):
        sequences = repeated_sequences(phrases_by_stage[stage], repetitions)
        for epoch in range(1, epochs_per_stage + 1):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start : start + batch_size]
                for key, value in trainer.step(batch, stage).items():
                    sums[key] = sums.get(key, 0.0) + value * len(batch)
            row = {
                "stage": stage,
                "cycle_length": stage,
                "epoch": epoch,
                "phrases": len(sequences),
                **{k: v / len(sequences) for k, v in sums.items()},
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            if on_epoch is not None:
                on_epoch(row)
    return rows


# --------------------------------------------------------------------------- top-K protocols
def round_robin_schedule(tokens: Sequence[int], epochs: int) -> list[tuple[int, int]]:
    """``(epoch, token)`` for every batch of round-robin training: each epoch visits every
    token exactly once, in the given order (seeds/000, the fair protocol)."""
    return [(epoch, token) for epoch in range(1, epochs + 1) for token in tokens]


def _token_rows(tokens, initial, final, seconds_per_token, converged_loss):
    rows = []
    for token, a, b in zip(tokens, initial.tolist(), final.tolist()):
        improvement = (a - b) / a if a > 0 else 0.0
        rows.append(
            {
                "token": int(token),
                "initial_loss": a,
                "final_loss": b,
                "improvement": improvement,
                "converged": bool(b < converged_loss),
                "seconds": seconds_per_token,
            }
        )
    return rows


def evaluate_round_robin(
    make_trainer: Callable[[int], RepetitionTrainer], tokens: Sequence[int], epochs: int, repetitions: int, cfg: RepetitionConfig
) -> tuple[list[dict[str, Any]], Tensor, list[tuple[int, int]]]:
    """One shared model; per epoch one batch (one step) per token, in order.

    Returns:
        ``(rows, fixed_points [K, d_c], steps)`` where ``steps`` records the
        ``(epoch, token)`` of every batch actually trained, in order.
    """
    trainer = make_trainer(0)
    sequences = repeated_sequences([[t] for t in tokens], repetitions)
    initial, _ = trainer.evaluate(sequences, 1)
    t0 = time.perf_counter()
    steps = []
    index = {int(t): i for i, t in enumerate(tokens)}
    for epoch, token in round_robin_schedule(tokens, epochs):
        trainer.step(sequences[index[int(token)]][None], 1)
        steps.append((epoch, int(token)))
    seconds = (time.perf_counter() - t0) / len(tokens)
    final, fixed_points = trainer.evaluate(sequences, 1)
    return _token_rows(tokens, initial, final, seconds, cfg.converged_loss), fixed_points, steps


def evaluate_sequential(
    make_trainer: Callable[[int], RepetitionTrainer], tokens: Sequence[int], epochs: int, repetitions: int, cfg: RepetitionConfig
) -> tuple[list[dict[str, Any]], Tensor]:
    """A fresh model per token (initialisation seeded by the token's index), ``epochs``
    steps on that token alone.  Returns ``(rows, fixed_points [K, d_c])``."""
    rows, fixed = [], []
    for i, token in enumerate(tokens):
        trainer = make_trainer(i + 1)
        sequence = repeated_sequences([[token]], repetitions)
        t0 = time.perf_counter()
        initial, _ = trainer.evaluate(sequence, 1)
        for _ in range(epochs):
            trainer.step(sequence, 1)
        final, point = trainer.evaluate(sequence, 1)
        rows.extend(_token_rows([token], initial, final, time.perf_counter() - t0, cfg.converged_loss))
        fixed.append(point[0])
    return rows, torch.stack(fixed)


def summarise_protocol(rows: list[dict[str, Any]], converged_loss: float = CONVERGED_LOSS) -> dict[str, Any]:
    """Mean improvement, convergence rate with counts, mean seconds per token, and how
    many tokens were below the threshold before any training (a contractive random
    initialisation can already "converge", so the rate alone overstates learning)."""
    converged = sum(r["converged"] for r in rows)
    before = sum(r["initial_loss"] < converged_loss for r in rows)
    return {
        "tokens": len(rows),
        "mean_improvement": float(np.mean([r["improvement"] for r in rows])),
        "converged": converged,
        "convergence_rate": converged / len(rows),
        "convergence": f"{100.0 * converged / len(rows):.1f} % ({converged}/{len(rows)})",
        "converged_before_training": before,
        "mean_initial_loss": float(np.mean([r["initial_loss"] for r in rows])),
        "mean_final_loss": float(np.mean([r["final_loss"] for r in rows])),
        "seconds_per_token": float(np.mean([r["seconds"] for r in rows])),
    }


def collapse_check(fixed_points: Tensor, threshold: float) -> dict[str, Any]:
    """Pairwise distances between the fixed points reached for different tokens.

    ``collapsed`` when the median pairwise distance is below ``threshold`` × the mean
    fixed-point norm: every token then lands on (nearly) one global attractor, and
    "convergence" says nothing about the input.

    Returns:
        ``min``, ``median``, ``max`` distance, ``mean_norm``, ``relative_median``,
        ``collapsed`` and the condensed ``distances`` list.

    Raises:
        ValueError: fewer than 2 fixed points.
    """
    if fixed_points.shape[0] < 2:
        raise ValueError("need fixed points of at least 2 tokens to compare")
    dist = torch.pdist(fixed_points.double())
    mean_norm = float(fixed_points.double().norm(dim=1).mean())
    median = float(dist.median())
    relative = median / mean_norm if mean_norm > 0 else 0.0
    return {
        "min": float(dist.min()),
        "median": median,
        "max": float(dist.max()),
        "mean_norm": mean_norm,
        "relative_median": relative,
        "threshold": threshold,
        "collapsed": bool(relative < threshold),
        "distances": dist.tolist(),
    }


def verdict(summary: dict[str, Any], collapse: dict[str, Any]) -> str:
    """``COLLAPSED`` beats any convergence: a single global attractor is never a success."""
    if collapse["collapsed"]:
        return "COLLAPSED (one global attractor; convergence is degenerate)"
    before = summary.get("converged_before_training", 0)
    note = f"; {before}/{summary['tokens']} already below the threshold before training" if before else ""
    if summary["convergence_rate"] == 1.0:
        return f"CONVERGED (distinct fixed points{note})"
    return f"PARTIAL ({summary['convergence']}{note})" if summary["converged"] else "NOT CONVERGED"


def make_trainer_factory(model_cfg: dict[str, Any], embeddings: Tensor, cfg: RepetitionConfig, seed: int, device: torch.device):
    """``factory(k)`` builds a freshly initialised trainer seeded by ``seed + k`` (blocks from
    :func:`newllm.model.build_blocks`, the main pipeline's factory)."""
    token_input = TokenInput(embeddings, int(model_cfg["num_input_tokens"])).to(device)
    config = ModelConfig.from_dict(model_cfg, token_input.embed_dim)

    def factory(k: int) -> RepetitionTrainer:
        torch.manual_seed(seed + k)
        block, token_block = build_blocks(config)
        return RepetitionTrainer(block.to(device), token_input, cfg, token_block.to(device))

    return factory
