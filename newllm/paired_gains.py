"""Paired differences between scaling points, and the study's bootstrap (rule ``bootstrap_test``).

No torch import.  Method: docs/method.md §11.  The replicates come from
:mod:`newllm.uncertainty`: every run and the head's LM share one conversation draw per
replicate, and points with the same seed labels share one seed draw, so the replicate
difference of two points carries their correlation and its percentile interval is a
paired interval (Efron & Tibshirani 1993, ch. 6; Koehn 2004).

- :func:`paired_difference`: ``L_a − L_b`` of two points with its interval.
- :func:`gain_over_head`: every point's loss below the frozen head's own LM.
- :func:`paired_gains_table`: the history gain, cvfp against every model and every model
  against the head (``paired_gains.csv``).
- :func:`bootstrap_study`: the whole rule, from the runs table and the per-token test NLLs.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from newllm.study import get_model, model_names, model_rank
from newllm.uncertainty import (
    DEFAULT_RESAMPLES,
    POINT_KEYS,
    POINT_MEANS,
    bootstrap_losses,
    check_test_losses,
    observed_losses,
    percentile_interval,
    reference_losses,
    run_conversation_sums,
    run_intervals,
    seed_mean_points,
)


class PairedDifference(NamedTuple):
    """``L_a − L_b`` of two points (nats per target token; > 0: ``b`` is better)."""

    observed: float
    """On the full test set, from the points' seed-mean ``test_loss``."""
    ci_low: float
    ci_high: float
    """Percentile interval of ``replicates``."""
    replicates: np.ndarray
    """``[B]`` the difference on every replicate (the same seed and conversation draws)."""


def point_column(keys: pd.DataFrame, point: Mapping[str, Any] | Sequence) -> int:
    """Column of ``point`` in the ``[B, P]`` point losses: its row position in ``keys``.

    Args:
        keys: the points table (rows in the order of the point-loss columns) with the
            :data:`POINT_KEYS` columns.
        point: a mapping with the :data:`POINT_KEYS`, or their values in that order.

    Raises:
        KeyError: no such point.  ValueError: the point is in ``keys`` more than once.
    """
    values = [point[k] for k in POINT_KEYS] if isinstance(point, Mapping) else list(point)
    if len(values) != len(POINT_KEYS):
        raise ValueError(f"a point is {len(POINT_KEYS)} values ({', '.join(POINT_KEYS)}), got {values}")
    mask = np.ones(len(keys), dtype=bool)
    for k, v in zip(POINT_KEYS, values):
        mask &= (keys[k] == v).to_numpy()
    found = np.flatnonzero(mask)
    if found.size == 0:
        raise KeyError(f"no point {dict(zip(POINT_KEYS, values))}")
    if found.size > 1:
        raise ValueError(f"point {dict(zip(POINT_KEYS, values))} is in the table {found.size} times")
    return int(found[0])


def paired_difference(
    point_losses: np.ndarray, keys: pd.DataFrame, a: Mapping | Sequence, b: Mapping | Sequence, confidence: float = 0.95
) -> PairedDifference:
    """The paired bootstrap of ``L_a − L_b`` between two points, e.g. the history gain
    ``L_reset_context − L_cvfp`` at one (variant, context_dim, samples) (docs/method.md
    §10.1, §11.3).

    Args:
        point_losses: ``[B, P]`` replicate losses (:func:`seed_mean_points`), nats per token.
        keys: the points table, rows = columns of ``point_losses``, with the
            :data:`POINT_KEYS` and ``test_loss``.
        a, b: the two points (:func:`point_column`).
        confidence: of the percentile interval.

    Returns:
        :class:`PairedDifference`: ``replicates[b] = point_losses[b, a] − point_losses[b, b]``;
        both columns use the same seed and conversation draws, so the interval carries
        their correlation and two identical points give exactly 0 with zero width.

    Raises:
        ValueError: ``point_losses`` does not have one column per row of ``keys``; as
            :func:`point_column`.
    """
    point_losses = np.asarray(point_losses, dtype=np.float64)
    if point_losses.ndim != 2 or point_losses.shape[1] != len(keys):
        raise ValueError(f"{len(keys)} points but point losses {point_losses.shape}")
    i, j = point_column(keys, a), point_column(keys, b)
    replicates = point_losses[:, i] - point_losses[:, j]
    low, high = percentile_interval(replicates, confidence)
    observed = float(keys["test_loss"].iloc[i] - keys["test_loss"].iloc[j])
    return PairedDifference(observed, float(low), float(high), replicates)


HEAD_GAIN_COLUMNS = ["gain_over_head", "gain_over_head_ci_low", "gain_over_head_ci_high"]
"""points.csv columns: ``ΔL = L_head − L_point`` (nats per target token; > 0: the point
beats the frozen head's own LM) and its percentile interval; NaN without a head LM."""


def gain_over_head(
    points: pd.DataFrame,
    point_losses: np.ndarray,
    head_loss: float | None,
    head_losses: np.ndarray | None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Every point's paired gain over the frozen head's own LM.

    Args:
        points: the points table (``test_loss``, rows = columns of ``point_losses``).
        point_losses: ``[B, P]`` replicate losses, nats per target token.
        head_loss: the head's test loss on the full test set (nats per target token).
        head_losses: ``[B]`` the head's loss on the same conversation draws
            (:func:`reference_losses` with the same resamples and seed); it has no seed.
            ``None`` or empty: no head LM, every column NaN.

    Returns:
        :data:`HEAD_GAIN_COLUMNS`, indexed like ``points``: ``head_loss − test_loss`` and
        the percentile interval of ``head_losses[b] − point_losses[b, p]``.

    Raises:
        ValueError: ``head_losses`` is not ``[B]`` or ``point_losses`` not ``[B, P]``.
    """
    out = pd.DataFrame(np.nan, index=points.index, columns=HEAD_GAIN_COLUMNS)
    if head_losses is None or np.size(head_losses) == 0 or head_loss is None:
        return out
    point_losses = np.asarray(point_losses, dtype=np.float64)
    head_losses = np.asarray(head_losses, dtype=np.float64)
    if point_losses.shape[1:] != (len(points),) or head_losses.shape != point_losses.shape[:1]:
        raise ValueError(f"{len(points)} points: point losses {point_losses.shape}, head losses {head_losses.shape}")
    low, high = percentile_interval(head_losses[:, None] - point_losses, confidence)
    out[HEAD_GAIN_COLUMNS[0]] = float(head_loss) - points["test_loss"].to_numpy(dtype=float)
    out[HEAD_GAIN_COLUMNS[1]], out[HEAD_GAIN_COLUMNS[2]] = low, high
    return out


PAIRED_GAIN_COLUMNS = [
    "comparison",
    "model",
    "variant",
    "context_dim",
    "samples",
    "baseline",
    "baseline_context_dim",
    "gain",
    "gain_ci_low",
    "gain_ci_high",
    "ppl_ratio",
]
"""paired_gains.csv: one row per comparison, the gain of ``model`` at (``variant``,
``context_dim``, ``samples``) over ``baseline`` at (``variant``, ``baseline_context_dim``,
``samples``): ``gain = L_baseline − L_model`` in nats per target token (> 0: ``model`` is
better), its paired percentile interval, ``ppl_ratio = exp(gain) = PPL_baseline /
PPL_model``.  ``comparison`` is ``history`` (model cvfp, baseline reset_context: the
history gain), ``over_model`` (model cvfp, baseline every other model) or ``over_head``
(any model, baseline ``head``, the frozen head's own LM; ``baseline_context_dim`` 0)."""


def _gain_row(comparison: str, point: pd.Series, baseline: str, baseline_dim: int, gain, low, high) -> dict:
    return {"comparison": comparison, **{k: point[k] for k in POINT_KEYS}, "baseline": baseline} | {
        "baseline_context_dim": int(baseline_dim),
        "gain": float(gain),
        "gain_ci_low": float(low),
        "gain_ci_high": float(high),
        "ppl_ratio": float(np.exp(gain)),
    }


def _reference_rows(points: pd.DataFrame, point_losses: np.ndarray, models: Sequence[str], confidence: float) -> list:
    """``history`` and ``over_model`` rows: every reference point against every other
    model at the same variant and size, at its context_dim (or 0 for a model without one)."""
    reference = model_names(role="reference")[0]
    controls = set(model_names(context="reset", pairs_with=reference))
    rows = []
    for _, ref in points[points["model"] == reference].iterrows():
        for other in models:
            if other == reference:
                continue
            dim = int(ref["context_dim"]) if get_model(other).per_context_dim else 0
            against = (other, ref["variant"], dim, ref["samples"])
            try:
                diff = paired_difference(point_losses, points, against, [ref[k] for k in POINT_KEYS], confidence)
            except KeyError:
                continue  # the other model has no such point
            kind = "history" if other in controls else "over_model"
            rows.append(_gain_row(kind, ref, other, dim, diff.observed, diff.ci_low, diff.ci_high))
    return rows


def paired_gains_table(
    points: pd.DataFrame,
    point_losses: np.ndarray,
    head_loss: float | None = None,
    head_losses: np.ndarray | None = None,
    families: Sequence[str] = ("context", "lm", "count"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """The study's paired gains (docs/method.md §10.1, §11.3): :data:`PAIRED_GAIN_COLUMNS`.

    For every point of every catalogue model of ``families``: the history gain (cvfp vs
    reset_context at the same variant, context_dim and size, where both exist), cvfp's
    gain over every other such model (that model at cvfp's variant and size, at cvfp's
    context_dim or at 0 for a model without one) and, with a head LM, the gain over the
    head.  Every interval is the percentile interval of the per-replicate difference.

    Args:
        points, point_losses: the points table and its ``[B, P]`` replicate losses.
        head_loss, head_losses: as :func:`gain_over_head` (``None``: no ``over_head`` rows).

    Returns:
        Rows ordered by comparison, model, baseline (catalogue order), variant,
        context_dim, samples; an empty table with the columns when nothing pairs.

    Raises:
        ValueError: as :func:`paired_difference` and :func:`gain_over_head`.
    """
    models = model_names(set(points["model"]), family=tuple(families))
    rows = _reference_rows(points, point_losses, models, confidence) if model_names(models, role="reference") else []
    head = gain_over_head(points, point_losses, head_loss, head_losses, confidence)
    for i, p in points[points["model"].isin(models)].iterrows():
        if not np.isnan(head.at[i, "gain_over_head"]):
            rows.append(_gain_row("over_head", p, "head", 0, *head.loc[i, HEAD_GAIN_COLUMNS]))
    table = pd.DataFrame(rows, columns=PAIRED_GAIN_COLUMNS)
    order = {"history": 0, "over_model": 1, "over_head": 2}
    return table.sort_values(
        ["comparison", "model", "baseline", "variant", "context_dim", "samples"],
        key=lambda c: c.map(order) if c.name == "comparison" else c.map(model_rank) if c.name in ("model", "baseline") else c,
        kind="stable",
    ).reset_index(drop=True)


class StudyBootstrap(NamedTuple):
    """What :func:`bootstrap_study` returns (the files of rule ``bootstrap_test``)."""

    points: pd.DataFrame
    """points.csv: :func:`seed_mean_points` plus :data:`HEAD_GAIN_COLUMNS`."""
    point_losses: np.ndarray
    """point_losses.npy: ``[B, P]`` hierarchical replicate losses (nats per target token)."""
    run_intervals: pd.DataFrame
    """run_intervals.csv: per run its keys, ``test_ppl`` and conversation-bootstrap interval."""
    info: dict
    """bootstrap.json: resamples, seed, resample_seeds, conversations, targets, runs,
    points, seconds and, with a head LM, ``head_loss``."""
    head_losses: np.ndarray
    """head_losses.npy: ``[B]`` the head's LM on the same conversation draws (``[0]`` without)."""
    paired_gains: pd.DataFrame
    """paired_gains.csv: :func:`paired_gains_table`."""


def bootstrap_study(
    runs: pd.DataFrame,
    token_nll: dict[str, np.ndarray],
    sample_end: Sequence[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    resample_seeds: bool = True,
    tolerance: float = 1e-3,
    head_nll: np.ndarray | None = None,
) -> StudyBootstrap:
    """The study's hierarchical bootstrap: per-run intervals, the scaling points and their
    paired gains.

    Args:
        runs: the runs table (one row per run, :data:`newllm.study.RUN_KEYS`,
            ``test_loss`` and the :data:`POINT_MEANS` / ``undertrained`` columns).
        token_nll: ``{path: [n − 1] token NLL}`` per run; the path names the run
            (``…/runs/{model}/{variant}/samples{N}_ctx{D}_seed{S}/…``).
        sample_end: the test stream's conversation ends (``test.json``).
        resamples, seed: B and the seed of the conversation draw; the seed draw uses
            ``seed + 1``.
        resample_seeds: ``False``: the conversation bootstrap of the seed means.
        tolerance: largest allowed ``|mean token NLL − runs.test_loss|`` (nats): the two
            come from the same evaluation, so a larger gap means the NLL file and the
            metrics disagree (a contract violation, not noise).
        head_nll: ``[n − 1]`` the frozen head's own LM on the test stream; ``None`` or
            empty: no head gains.

    Returns:
        :class:`StudyBootstrap`.

    Raises:
        ValueError: a run without an NLL file or vice versa, NLL files that disagree on the
            test set, a test loss that disagrees with its NLL file, or a head NLL of
            another length.
    """
    t0 = time.perf_counter()
    table = runs.reset_index(drop=True)
    keys, sums, counts = run_conversation_sums(table, token_nll, sample_end)
    observed = observed_losses(sums, counts)
    check_test_losses(keys, observed, table["test_loss"].to_numpy(dtype=float), tolerance)
    boot = bootstrap_losses(sums, counts, resamples, seed)
    points, point_boot = seed_mean_points(
        table,
        boot,
        observed,
        seed=seed + 1,
        resample_seeds=resample_seeds,
        mean_columns=[c for c in POINT_MEANS if c in table],
        count_columns=["undertrained"] if "undertrained" in table else [],
    )
    head_loss, head_boot = None, np.empty(0)
    if head_nll is not None and np.size(head_nll):
        head_loss, head_boot = reference_losses(head_nll, sample_end, resamples, seed)
    points = pd.concat([points, gain_over_head(points, point_boot, head_loss, head_boot)], axis=1)
    gains = paired_gains_table(points, point_boot, head_loss, head_boot)
    sizes = {"conversations": int(counts.size), "targets": int(counts.sum()), "runs": len(table), "points": len(points)}
    info = {"resamples": int(resamples), "seed": int(seed), "resample_seeds": bool(resample_seeds), **sizes}
    info.update({} if head_loss is None else {"head_loss": head_loss}, seconds=time.perf_counter() - t0)
    return StudyBootstrap(points, point_boot, run_intervals(table, observed, boot), info, head_boot, gains)
