"""Usable memory: how much of the history gain the trained TokenBlock gets from the last
``k`` tokens (docs/method.md §10).

The memory probe (newllm.diagnostics) measures how far a perturbation travels through
the contexts; this measures whether that memory is *used* for prediction.  The trained
cvfp TokenBlock is evaluated, without retraining, on test contexts recomputed from only
the last ``k`` tokens (:func:`newllm.context_cache.truncated_history_caches`): ``k = 1`` is its
own reset context, ``k = all`` the exported cache it was trained on.  The share of the
history gain reached at ``k`` is ``(L_1 - L_k) / (L_1 - L_all)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd
from torch import Tensor

from newllm.context_cache import truncated_history_caches
from newllm.model import ContextBlock, TokenBlock, TokenInput
from newllm.phase2 import Phase2Config, Split, evaluate
from newllm.study import RUN_KEYS

HISTORY_LENGTHS = (1, 2, 4, 8, 16, 32, 64)
"""Tokens of history ``k`` evaluated besides the full history (``all``)."""

SHARES = (0.9, 0.99)
"""Shares of the history gain whose smallest ``k`` is reported."""


def history_curve(
    context_block: ContextBlock,
    token_block: TokenBlock,
    token_input: TokenInput,
    stream: Tensor,
    full_cache: Tensor,
    cfg: Phase2Config,
    lengths: Sequence[int] = HISTORY_LENGTHS,
    batch_size: int = 4096,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Test loss of ``token_block`` when its contexts see only the last ``k`` tokens.

    Args:
        stream: ``[n]`` int64 test token ids.
        full_cache: ``[n, L, d_c]`` the exported cache (every token's full history).
        lengths: ascending history lengths ``k`` (tokens).

    Returns:
        one row per ``k`` and a last one for ``all``: ``{"history" (tokens, or "all"),
        "loss" (nats per target), "ppl", "accuracy", "tokens" (targets)}``.
    """
    rows = []
    for k, cache in truncated_history_caches(context_block, token_input, stream, lengths, batch_size):
        rows.append({"history": k, **_scores(token_block, token_input, Split(stream, cache), cfg, precision)})
    rows.append({"history": "all", **_scores(token_block, token_input, Split(stream, full_cache), cfg, precision)})
    return rows


def _scores(token_block: TokenBlock, token_input: TokenInput, split: Split, cfg: Phase2Config, precision: str) -> dict:
    result = evaluate(token_block, token_input, split, cfg, precision=precision)
    return {key: result[key] for key in ("loss", "ppl", "accuracy", "tokens")}


def history_needed(rows: Sequence[dict[str, Any]], shares: Sequence[float] = SHARES) -> dict[str, Any]:
    """The history gain ``L_1 - L_all`` (nats per target) and, per share ``s``, the
    smallest ``k`` whose gain ``L_1 - L_k`` reaches ``s`` of it (``"all"`` when no finite
    ``k`` does; ``None`` when there is no gain to share, ``L_1 <= L_all``).

    Raises:
        ValueError: the rows do not start at ``k = 1`` or lack the ``all`` row.
    """
    if not rows or rows[0]["history"] != 1 or rows[-1]["history"] != "all":
        raise ValueError("history rows must start at k = 1 and end with k = 'all'")
    first, full = rows[0]["loss"], rows[-1]["loss"]
    gain = first - full
    out: dict[str, Any] = {"history_gain": gain}
    for share in shares:
        key = f"k{round(100 * share)}"
        if not gain > 0 or not math.isfinite(gain):
            out[key] = None
            continue
        out[key] = next((r["history"] for r in rows[:-1] if first - r["loss"] >= share * gain), "all")
    return out


def memory_probe_tables(diagnostics: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The perturbation probe of every run (``phase1_diagnostics.json`` records): a table
    with one row per run (first lag below 10 % / 1 % of the lag-1 effect) and the curves,
    one row per run and lag (``effect``: mean ‖Δc_i‖; ``relative``: over the lag-1 effect)."""
    rows, curves = [], []
    for diag in diagnostics:
        key, probe = {k: diag["run"][k] for k in RUN_KEYS}, diag["memory_probe"]
        rows.append(
            {
                **key,
                "lag_below_10pct": probe["lag_below_10pct"],
                "lag_below_1pct": probe["lag_below_1pct"],
                "effect_lag1": probe["effect"][0],
                "max_lag": probe["max_lag"],
                "positions": probe["positions"],
            }
        )
        curves += [
            {**key, "lag": k, "effect": e, "relative": r} for k, e, r in zip(probe["lags"], probe["effect"], probe["relative"])
        ]
    return pd.DataFrame(rows, columns=[*RUN_KEYS, *PROBE_COLUMNS]), pd.DataFrame(curves, columns=[*RUN_KEYS, *CURVE_COLUMNS])


PROBE_COLUMNS = ["lag_below_10pct", "lag_below_1pct", "effect_lag1", "max_lag", "positions"]
CURVE_COLUMNS = ["lag", "effect", "relative"]
USABLE_COLUMNS = ["history", "loss", "ppl", "accuracy", "tokens", "share_of_history_gain"]
SUMMARY_COLUMNS = ["history_gain", *(f"k{round(100 * s)}" for s in SHARES)]


def usable_memory_tables(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The usable-memory records of every run (``usable_memory.json``): one row per run and
    ``k`` with the share of the history gain, and one row per run with the gain and the
    ``k`` reaching 90 % / 99 % of it (:func:`history_needed`)."""
    rows, summary = [], []
    for record in records:
        key = {k: record["run"][k] for k in RUN_KEYS}
        first, full = record["curve"][0]["loss"], record["curve"][-1]["loss"]
        gain = first - full
        for row in record["curve"]:
            share = (first - row["loss"]) / gain if gain > 0 else math.nan
            rows.append({**key, **row, "history": str(row["history"]), "share_of_history_gain": share})
        summary.append({**key, **{k: record[k] for k in SUMMARY_COLUMNS}})
    return pd.DataFrame(rows, columns=[*RUN_KEYS, *USABLE_COLUMNS]), pd.DataFrame(summary, columns=[*RUN_KEYS, *SUMMARY_COLUMNS])
