"""The verdict's opening: the history gain, the gain over the head, and the seed notes'
claims answered from the numbers (docs/method.md §8.6, §10.1, §11.3).  No torch import.

Every statement is generated from the tables of one study: the paired bootstrap gains
(``bootstrap/paired_gains.csv``), the points (``bootstrap/points.csv``), the scaling fits,
the prediction correlations, the runs table and the usable-memory summary.  A claim the
study's design cannot test says what would test it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from newllm.paired_gains import paired_difference
from newllm.study import get_model, model_rank

REFERENCE = "cvfp"
HISTORY_CONTROL = "reset_context"
SEED_ALPHA_RANGE = (-0.55, -0.47)
"""The seed notes' power-law exponents of cvfp on UltraChat with GPT-2 embeddings."""
STATUSES = ("supported", "contradicted", "inconclusive", "not tested here")


def _ci_sign(low: float, high: float) -> int:
    """+1 when an interval lies above 0, -1 below, 0 when it covers 0 or is undefined."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0


# ------------------------------------------------------------------------ history gain
def history_gains(paired: pd.DataFrame, points: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per (variant, context_dim, samples) of the history gain, cvfp over
    reset_context: ``gain`` = L_reset − L_cvfp (nats per token) [CI], the PPL ratio, the
    training tokens (seed mean) and ``clear`` (+1 interval above 0, −1 below, 0 covers 0)."""
    rows = paired[paired["comparison"] == "history"] if len(paired) else paired
    tokens = points[points["model"] == REFERENCE].set_index(["variant", "context_dim", "samples"])["train_tokens"]
    out = []
    for r in rows.sort_values(["variant", "context_dim", "samples"]).itertuples():
        key = (r.variant, r.context_dim, r.samples)
        out.append(
            {
                "variant": r.variant,
                "context_dim": int(r.context_dim),
                "samples": int(r.samples),
                "train_tokens": float(tokens.get(key, math.nan)),
                "gain": float(r.gain),
                "ci": [float(r.gain_ci_low), float(r.gain_ci_high)],
                "ppl_ratio": float(r.ppl_ratio),
                "clear": _ci_sign(r.gain_ci_low, r.gain_ci_high),
            }
        )
    return out


def head_gains(points: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model (catalogue order), the sizes at which its gain over the head's own LM has
    an interval above 0 (``above``) or below 0 (``below``), of ``sizes`` evaluated, and its
    gain [CI] at the largest size (first variant, smallest context_dim for the choice)."""
    if "gain_over_head" not in points or points["gain_over_head"].isna().all():
        return []
    out = []
    for model in sorted(points["model"].unique(), key=model_rank):
        sel = points[(points["model"] == model) & (points["variant"] == points["variant"].iloc[0])]
        if not len(sel):
            sel = points[points["model"] == model]
        sel = sel[sel["context_dim"] == sel["context_dim"].min()].sort_values("samples")
        signs = [_ci_sign(lo, hi) for lo, hi in zip(sel["gain_over_head_ci_low"], sel["gain_over_head_ci_high"])]
        last = sel.iloc[-1]
        out.append(
            {
                "model": model,
                "context_dim": int(last["context_dim"]),
                "sizes": [int(s) for s in sel["samples"]],
                "above": [int(s) for s, g in zip(sel["samples"], signs) if g > 0],
                "below": [int(s) for s, g in zip(sel["samples"], signs) if g < 0],
                "largest": int(last["samples"]),
                "gain": float(last["gain_over_head"]),
                "ci": [float(last["gain_over_head_ci_low"]), float(last["gain_over_head_ci_high"])],
            }
        )
    return out


def memory_summary(usable: pd.DataFrame | None) -> dict[str, Any] | None:
    """The usable-memory ``k`` reaching 90 % / 99 % of the history gain at the largest size
    (each run's value; ``all`` when no finite k does), or ``None`` without runs."""
    if usable is None or not len(usable):
        return None
    largest = usable[usable["samples"] == usable["samples"].max()]
    return {
        "samples": int(largest["samples"].iloc[0]),
        "k90": [str(v) for v in largest["k90"]],
        "k99": [str(v) for v in largest["k99"]],
        "runs": int(len(largest)),
    }


# ----------------------------------------------------------------------------- claims
def _claim(claim: str, tested_by: str, status: str, evidence: str) -> dict[str, str]:
    assert status in STATUSES, status
    return {"claim": claim, "tested_by": tested_by, "status": status, "evidence": evidence}


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _interval(ci: Sequence[float], digits: int = 3) -> str:
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def claim_history(history: list[Mapping[str, Any]]) -> dict[str, str]:
    """The context carries usable history: the history gain at the largest size."""
    claim = "The context vector carries usable history, not just another view of the current token"
    if not history:
        return _claim(claim, "cvfp vs reset_context", "not tested here", "needs models cvfp and reset_context")
    largest = max(h["samples"] for h in history)
    at = [h for h in history if h["samples"] == largest]
    signs = {h["clear"] for h in at}
    status = "supported" if signs == {1} else "contradicted" if signs == {-1} else "inconclusive"
    evidence = "; ".join(
        f"d_c {h['context_dim']} ({h['variant']}): {_fmt(h['gain'], 4)} nats {_interval(h['ci'], 4)}" for h in at
    )
    return _claim(claim, f"history gain at {largest} conversations", status, evidence)


def claim_fixed_point(runs: pd.DataFrame) -> dict[str, str]:
    """CVFP reaches a fixed point: every cvfp context cache converged without the fallback."""
    claim = "CVFP reaches a fixed point"
    cvfp = runs[runs["model"] == REFERENCE] if "model" in runs else runs.iloc[0:0]
    if not len(cvfp) or "cache_converged" not in cvfp:
        return _claim(claim, "cache solves of cvfp runs", "not tested here", "needs cvfp runs")
    converged = cvfp["cache_converged"].astype(bool)
    rate = cvfp["train_convergence_rate"] if "train_convergence_rate" in cvfp else pd.Series(dtype=float)
    median = float(np.nanmedian(rate.astype(float))) if rate.notna().any() else math.nan
    status = "supported" if converged.all() else "contradicted"
    evidence = f"{int(converged.sum())}/{len(cvfp)} cache solves reached the solver tolerance"
    if math.isfinite(median):
        evidence += f"; Phase 1's final training convergence rate, median over runs: {100 * median:.1f} %"
    return _claim(claim, "cvfp context caches (fixed-point solves)", status, evidence)


def _alpha(fits: pd.DataFrame, model: str, variant: str, dim: int) -> pd.Series | None:
    sel = fits[(fits["model"] == model) & (fits["variant"] == variant) & (fits["context_dim"] == dim)]
    return None if not len(sel) else sel.iloc[0]


def claim_seed_alpha(fits: pd.DataFrame, config: Mapping[str, Any], variant: str) -> dict[str, str]:
    """α ≈ −0.47…−0.55 on UltraChat with GPT-2 embeddings."""
    claim = "cvfp's power-law exponent is about -0.47 to -0.55 (UltraChat, GPT-2 embeddings)"
    rows = fits[(fits["model"] == REFERENCE) & (fits["variant"] == variant)]
    found = "; ".join(
        f"d_c {int(r.context_dim)}: alpha {_fmt(r.alpha)} {_interval([r.alpha_boot_ci_low, r.alpha_boot_ci_high])}"
        for r in rows.itertuples()
    )
    corpus, source = str(config.get("corpus", {}).get("name", "")), str(config.get("embeddings", {}).get("source", ""))
    if "ultrachat" not in corpus.lower() or source != "gpt2":
        return _claim(
            claim,
            "config/ultrachat_gpt2.yaml",
            "not tested here",
            f"needs UltraChat with GPT-2 embeddings; this study ({corpus}, {source} embeddings): {found or 'no fit'}",
        )
    lo, hi = SEED_ALPHA_RANGE
    overlap = [r for r in rows.itertuples() if r.alpha_boot_ci_low <= hi and r.alpha_boot_ci_high >= lo]
    status = "supported" if len(rows) and len(overlap) == len(rows) else "contradicted" if len(rows) else "not tested here"
    return _claim(claim, "power-law fit of cvfp", status, found or "no fit")


def claim_context_dim(fits: pd.DataFrame, variant: str) -> dict[str, str]:
    """A larger context_dim worsens α (a less negative exponent)."""
    claim = "A larger context_dim worsens the scaling exponent"
    rows = fits[(fits["model"] == REFERENCE) & (fits["variant"] == variant)].sort_values("context_dim")
    if len(rows) < 2:
        return _claim(claim, "config/cpu_variants.yaml (3 context_dims)", "not tested here", "needs >= 2 context_dims")
    small, large = rows.iloc[0], rows.iloc[-1]
    if large["alpha_boot_ci_low"] > small["alpha_boot_ci_high"]:
        status = "supported"
    elif large["alpha_boot_ci_high"] < small["alpha_boot_ci_low"]:
        status = "contradicted"
    else:
        status = "inconclusive"
    evidence = "; ".join(
        f"d_c {int(r['context_dim'])}: {_fmt(r['alpha'])} {_interval([r['alpha_boot_ci_low'], r['alpha_boot_ci_high']])}"
        for r in (small, large)
    )
    return _claim(
        claim, f"cvfp alpha at context_dim {int(small['context_dim'])} vs {int(large['context_dim'])}", status, evidence
    )


def claim_input_tokens(runs: pd.DataFrame, points: pd.DataFrame, point_losses: np.ndarray) -> dict[str, str]:
    """Two input tokens improve PPL: cvfp with num_input_tokens 2 vs 1 at the largest size."""
    claim = "Two input tokens improve perplexity"
    cvfp = runs[runs["model"] == REFERENCE] if "num_input_tokens" in runs else runs.iloc[0:0]
    by_tokens = cvfp.groupby("num_input_tokens")["variant"].first() if len(cvfp) else pd.Series(dtype=object)
    if not {1, 2} <= set(int(v) for v in by_tokens.index):
        return _claim(
            claim, "config/cpu_variants.yaml (variant tok2)", "not tested here", "needs cvfp variants with 1 and 2 input tokens"
        )
    one, two = by_tokens.loc[1], by_tokens.loc[2]
    sel = points[(points["model"] == REFERENCE) & points["variant"].isin([one, two])]
    largest, parts, signs = sel["samples"].max(), [], set()
    for dim in sorted(sel["context_dim"].unique()):
        a = {"model": REFERENCE, "variant": one, "context_dim": dim, "samples": largest}
        b = {**a, "variant": two}
        diff = paired_difference(point_losses, points, a, b)  # L_one - L_two: positive = two tokens better
        signs.add(_ci_sign(diff.ci_low, diff.ci_high))
        parts.append(f"d_c {int(dim)}: {_fmt(diff.observed, 4)} nats {_interval([diff.ci_low, diff.ci_high], 4)}")
    status = "supported" if signs == {1} else "contradicted" if signs == {-1} else "inconclusive"
    return _claim(claim, f"cvfp {two} vs {one} at {int(largest)} conversations (L_1 - L_2)", status, "; ".join(parts))


def claim_er_predicts(prediction: pd.DataFrame) -> list[dict[str, str]]:
    """Phase 1 dev ER predicts Phase 2 PPL (within-size partial correlation) and α (across
    configurations)."""
    claim_ppl = "Phase 1's dev effective rank predicts Phase 2 perplexity"
    claim_alpha = "Phase 1's dev effective rank predicts the scaling exponent"
    row = prediction[prediction["predictor"] == "dev_er_pct"] if len(prediction) else prediction
    if not len(row) or not math.isfinite(float(row.iloc[0]["partial_r"])):
        first = _claim(
            claim_ppl, "within-size partial correlation", "not tested here", "needs runs whose dev ER varies within a size"
        )
    else:
        r = row.iloc[0]
        sign = _ci_sign(r["partial_r_ci_low"], r["partial_r_ci_high"])  # higher ER with lower loss: sign -1
        status = {-1: "supported", 1: "contradicted", 0: "inconclusive"}[sign]
        ci = _interval([r["partial_r_ci_low"], r["partial_r_ci_high"]], 2)
        evidence = f"partial r = {_fmt(r['partial_r'], 2)} {ci}, n_eff {r['n_eff']:.1f}"
        first = _claim(claim_ppl, "within-size partial correlation of dev ER and test loss", status, evidence)
    configs = int(row.iloc[0]["n_configurations"]) if len(row) else 0
    second = (
        _claim(
            claim_alpha,
            "config/cpu_variants.yaml (18 configurations)",
            "not tested here",
            f"needs >= 3 configurations with their own fits; this study has {configs}",
        )
        if configs < 3
        else _claim(
            claim_alpha,
            "across-configuration correlation",
            "inconclusive",
            f"config r = {_fmt(float(row.iloc[0]['config_r']), 2)} over {configs} configurations (no interval at this n)",
        )
    )
    return [first, second]


def findings(
    paired: pd.DataFrame,
    points: pd.DataFrame,
    point_losses: np.ndarray,
    fits: pd.DataFrame,
    runs: pd.DataFrame,
    prediction: pd.DataFrame,
    usable: pd.DataFrame | None,
    config: Mapping[str, Any],
    variant: str,
) -> dict[str, Any]:
    """Everything the verdict opens with (JSON-ready): ``history``, ``memory``,
    ``head_gains`` and ``claims`` (each claim: ``claim``, ``tested_by``, ``status`` in
    :data:`STATUSES`, ``evidence``)."""
    history = history_gains(paired, points)
    claims = [
        claim_history(history),
        claim_fixed_point(runs),
        claim_seed_alpha(fits, config, variant),
        claim_context_dim(fits, variant),
        claim_input_tokens(runs, points, point_losses),
        *claim_er_predicts(prediction),
    ]
    return {"history": history, "memory": memory_summary(usable), "head_gains": head_gains(points), "claims": claims}


# ---------------------------------------------------------------------------- markdown
def _sizes(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def history_markdown(history: list[Mapping[str, Any]], memory: Mapping[str, Any] | None) -> list[str]:
    """The history-gain table and its one-line reading."""
    if not history:
        return ["**History gain:** not measured (the study needs cvfp and reset_context)."]
    lines = [
        "**History gain** — does the context carry usable history? cvfp against reset_context (the same trained "
        "ContextBlock fed a zero previous context), test loss difference in nats per token (positive: history helps), "
        "95 % hierarchical bootstrap over seeds and test conversations:",
        "",
        "| variant | context_dim | conversations | training tokens | history gain (nats) | 95 % CI | PPL ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in history:
        lines.append(
            f"| {h['variant']} | {h['context_dim']} | {h['samples']} | {h['train_tokens']:,.0f} | {_fmt(h['gain'], 4)} | "
            f"{_interval(h['ci'], 4)} | {h['ppl_ratio']:.3f} |"
        )
    multi = len({(h["variant"], h["context_dim"]) for h in history}) > 1
    names = [f"{h['variant']}/{h['context_dim']}/{h['samples']}" if multi else str(h["samples"]) for h in history]
    above = [n for n, h in zip(names, history) if h["clear"] > 0]
    below = [n for n, h in zip(names, history) if h["clear"] < 0]
    where = "variant/context_dim/conversations" if multi else "conversations"
    lines += [
        "",
        f"Interval above 0 at {len(above)} of {len(history)} points ({where}: {', '.join(above) or 'none'})"
        + (f"; below 0 at {', '.join(below)}." if below else "."),
    ]
    if memory:
        lines.append(
            f"Usable memory at {memory['samples']} conversations: 90 % of the history gain within k = "
            f"{', '.join(memory['k90'])} tokens, 99 % within k = {', '.join(memory['k99'])} (one value per run)."
        )
    return lines


def head_markdown(head: list[Mapping[str, Any]]) -> list[str]:
    """Per model: the sizes where it is clearly above the head's own LM."""
    if not head:
        return []
    lines = [
        "",
        "**Gain over the frozen head's own LM** (nats per token, 95 % CI; the head was trained on the embedding slice):",
        "",
    ]
    for h in head:
        label = get_model(h["model"]).label if h["model"] else h["model"]
        lines.append(
            f"- {label}: clearly above the head at {len(h['above'])} of {len(h['sizes'])} sizes"
            + (f" ({_sizes(h['above'])} conversations)" if h["above"] else "")
            + (f", clearly below at {_sizes(h['below'])}" if h["below"] else "")
            + f"; at {h['largest']}: {_fmt(h['gain'], 4)} {_interval(h['ci'], 4)}"
        )
    return lines


def claims_markdown(claims: list[Mapping[str, str]]) -> list[str]:
    """The seed notes' claims as a table."""
    lines = ["", "## The seed notes' claims", "", "| claim | tested by | status | evidence |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['tested_by']} | **{c['status']}** | {c['evidence']} |" for c in claims]
    return lines


def findings_markdown(f: Mapping[str, Any]) -> str:
    """The opening section of verdict.md: history gain, gain over the head (the claims
    follow the comparisons; see :func:`claims_markdown`)."""
    return "\n".join(history_markdown(f["history"], f["memory"]) + head_markdown(f["head_gains"])) + "\n"
