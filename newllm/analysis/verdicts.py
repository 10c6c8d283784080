"""The verdict: the report's opening lines, generated from the numbers (docs/method.md §8.6).
No torch import.

:func:`verdict` gathers the numbers (JSON-ready), :func:`verdict_markdown` writes them as
a few sentences and :func:`verdict_html` as a standalone page.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from newllm import study
from newllm.analysis.comparisons import REFERENCE_MODEL, paired_alpha_difference
from newllm.scaling import EXTRAPOLATE_MULTIPLES, MIN_POINTS_AICC, TOO_FEW_POINTS, multiple_tag
from newllm.study import model_rank
from newllm.uncertainty import percentile_interval


# ----------------------------------------------------------------------------- verdict
def _dev_choice(points: pd.DataFrame, mask: pd.Series, prefer_dim: int | None = None) -> int | None:
    """Row of the configuration chosen among ``points[mask]``: the one with ``prefer_dim``
    if present, else the lowest seed-mean dev loss (selection on dev, never on test)."""
    cand = points[mask]
    if not len(cand):
        return None
    if prefer_dim is not None and (cand["context_dim"] == prefer_dim).any():
        cand = cand[cand["context_dim"] == prefer_dim]
    if "dev_loss" in cand and cand["dev_loss"].notna().any():
        return int(cand["dev_loss"].idxmin())
    return int(cand.index[0])


def _verdict_comparisons(
    points: pd.DataFrame, point_boot: np.ndarray, at: pd.Series, ref_i: int, others: list[str], confidence: float
) -> list[dict[str, Any]]:
    """Each other model at the largest size (``at``), in the reference's variant when it runs
    that variant (a paired control), at the reference's context_dim when it has it, else its
    lowest-dev configuration: PPL and ``percent = 100·(PPL_ref/PPL_model − 1)`` with a
    bootstrap interval."""
    ref = points.loc[ref_i]
    comparisons = []
    for model in others:
        mask = at & (points["model"] == model)
        same_variant = mask & (points["variant"] == ref["variant"])
        i = _dev_choice(points, same_variant if same_variant.any() else mask, prefer_dim=int(ref["context_dim"]))
        if i is None:
            continue
        p = points.loc[i]
        d = point_boot[:, ref_i] - point_boot[:, i]  # ln(PPL_ref / PPL_model) per resample
        lo, hi = percentile_interval(d, confidence)
        pct = 100 * (math.exp(ref["test_loss"] - p["test_loss"]) - 1)
        comparisons.append(
            {
                "model": model,
                "variant": p["variant"],
                "context_dim": int(p["context_dim"]),
                "ppl": _num(p["test_ppl"]),
                "ppl_ci": [_num(p.get("test_ppl_ci_low")), _num(p.get("test_ppl_ci_high"))],
                "percent": pct,
                "percent_ci": [100 * (math.exp(lo) - 1), 100 * (math.exp(hi) - 1)],
                "dev_loss": _num(p.get("dev_loss")),
                "index": int(i),
            }
        )
    return comparisons


def _best_baseline(comparisons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline (a catalogue model of role ``baseline``) with the lowest dev loss and whether the reference
    beats it (whole interval below 0), loses (above) or is inconclusive; ``None`` without one."""
    baselines = [c for c in comparisons if c["model"] in study.model_names(role="baseline")]
    if not baselines:
        return None
    best = min(baselines, key=lambda c: c["dev_loss"] if c["dev_loss"] is not None else math.inf)
    lo, hi = best["percent_ci"]
    outcome = "beats" if hi < 0 else "loses" if lo > 0 else "inconclusive"
    return {
        "model": best["model"],
        "context_dim": best["context_dim"],
        "chosen_on": "dev loss",
        "outcome": outcome,
        "percent": best["percent"],
        "percent_ci": best["percent_ci"],
    }


def _fit_row(fits: pd.DataFrame, model: str, variant: str | None, dim: int | None) -> pd.Series | None:
    """The scaling-fit row of one configuration, ``None`` without one."""
    if dim is None:
        return None
    f = fits[(fits["model"] == model) & (fits["variant"] == variant) & (fits["context_dim"] == dim)]
    return f.iloc[0] if len(f) else None


def _alpha_entry(fits: pd.DataFrame, model: str, variant: str | None, dim: int | None) -> dict[str, Any] | None:
    """α [CI] of one configuration's scaling fit (bootstrap percentile interval, else OLS t);
    ``None`` when it has no fit."""
    f = _fit_row(fits, model, variant, dim)
    if f is None:
        return None
    boot_ci = [_num(f.get("alpha_boot_ci_low")), _num(f.get("alpha_boot_ci_high"))]
    ci, kind = (
        (boot_ci, "bootstrap") if None not in boot_ci else ([_num(f.get("alpha_ci_low")), _num(f.get("alpha_ci_high"))], "ols_t")
    )
    return {
        "model": model,
        "variant": variant,
        "context_dim": dim,
        "alpha": _num(f["alpha"]),
        "alpha_ci": ci,
        "interval": kind,
        "preferred_form": f.get("preferred_form"),
        "n_points": int(f["n_points"]),
    }


def _flag(value: Any) -> bool | None:
    """A yes/no cell of a table read back from CSV (``None`` when empty)."""
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def _extrapolation_entry(fits: pd.DataFrame, model: str, variant: str | None, dim: int | None) -> dict[str, Any] | None:
    """Both forms' PPL [bootstrap CI] at the largest multiple of :data:`EXTRAPOLATE_MULTIPLES`
    of one configuration's largest size, and whether the two intervals are disjoint;
    ``None`` without a fit or without that column."""
    f, multiple = _fit_row(fits, model, variant, dim), max(EXTRAPOLATE_MULTIPLES)
    at = f"ppl_at_{multiple_tag(multiple)}"
    if f is None or at not in f:
        return None
    return {
        "model": model,
        "variant": variant,
        "context_dim": dim,
        "multiple": multiple,
        "tokens": _num(f.get(f"tokens_at_{multiple_tag(multiple)}")),
        "power_law": [_num(f.get(f"{at}{end}")) for end in ("", "_ci_low", "_ci_high")],
        "loss_form": [
            _num(f.get(f"{at}_loss_form")),
            _num(f.get(f"{at}_loss_form_ci_low")),
            _num(f.get(f"{at}_loss_form_ci_high")),
        ],
        "forms_disagree": _flag(f.get(f"forms_disagree_at_{multiple_tag(multiple)}")),
        "preferred_form": f.get("preferred_form"),
    }


def _verdict_configurations(
    reference: tuple[str, str, int], others: list[str], comparisons: list[dict]
) -> list[tuple[str, str | None, int | None]]:
    """``(model, variant, context_dim)`` of the ``reference`` configuration and of each
    compared model's configuration (``None``s for a model without a comparison)."""
    configurations = [reference]
    for model in others:
        compared = next((c for c in comparisons if c["model"] == model), None)
        configurations.append((model, compared["variant"], compared["context_dim"]) if compared else (model, None, None))
    return configurations


def _verdict_fit_entries(fits: pd.DataFrame, configurations: list[tuple], entry) -> list[dict[str, Any]]:
    """``entry(fits, model, variant, dim)`` of every configuration that has one."""
    return [e for e in (entry(fits, *config) for config in configurations) if e is not None]


def _config_curve(points: pd.DataFrame, point_boot: np.ndarray, config: tuple[str, str, int]) -> tuple:
    """``(train tokens [n], test loss [n], boot [B, n])`` of one configuration's points."""
    model, variant, dim = config
    rows = (points["model"] == model) & (points["variant"] == variant) & (points["context_dim"] == dim)
    idx = np.flatnonzero(rows.to_numpy())
    return points["train_tokens"].to_numpy(float)[idx], points["test_loss"].to_numpy(float)[idx], point_boot[:, idx]


def _verdict_alpha_differences(
    points: pd.DataFrame, point_boot: np.ndarray, ref_i: int, comparisons: list[dict], confidence: float
) -> list[dict[str, Any]]:
    """``Δα = α_reference − α_model`` of the reference configuration and each compared
    model's configuration on their common sizes, paired by replicate
    (:func:`newllm.analysis.comparisons.paired_alpha_difference`)."""
    if "train_tokens" not in points:
        return []
    ref = points.loc[ref_i]
    reference_curve = _config_curve(points, point_boot, (ref["model"], ref["variant"], int(ref["context_dim"])))
    out = []
    for c in comparisons:
        model_curve = _config_curve(points, point_boot, (c["model"], c["variant"], c["context_dim"]))
        diff = paired_alpha_difference(*reference_curve, *model_curve, confidence=confidence)
        if diff is not None:
            out.append(
                {
                    "model": c["model"],
                    "variant": c["variant"],
                    "context_dim": c["context_dim"],
                    "delta_alpha": _num(diff["delta_alpha"]),
                    "delta_alpha_ci": [_num(diff["delta_alpha_ci_low"]), _num(diff["delta_alpha_ci_high"])],
                    "clear_difference": diff["clear_difference"],
                    "n_points": diff["n_points"],
                }
            )
    return out


def _undertrained_by_model(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model (study order): runs that ended on their budget, and all runs."""
    under = []
    for model in sorted(runs["model"].unique(), key=model_rank):
        r = runs[runs["model"] == model]
        under.append({"model": model, "undertrained": int(r["undertrained"].astype(bool).sum()), "runs": int(len(r))})
    return under


def verdict(
    points: pd.DataFrame,
    point_boot: np.ndarray,
    fits: pd.DataFrame,
    runs: pd.DataFrame,
    reference_variant: str,
    reference: str = REFERENCE_MODEL,
    confidence: float = 0.95,
    test_set: Mapping[str, Any] | None = None,
    resamples: int | None = None,
    head_reference: Mapping[str, Any] | None = None,
    head_boot: np.ndarray | None = None,
) -> dict[str, Any]:
    """The numbers behind the report's opening lines.

    At the study's largest size: the reference configuration is ``reference`` with
    ``reference_variant`` at the context_dim with the lowest dev loss; every other model at
    the same context_dim when it has it, else at its lowest-dev configuration.  For each:
    ``percent = 100·(PPL_ref/PPL_model − 1)`` [bootstrap CI] (negative = the reference is
    better).  The reference *beats* the best baseline (catalogue role ``baseline``, lowest
    dev loss) when the whole interval is below 0, *loses* when above, else *inconclusive*.
    Per configuration: α [CI] (bootstrap percentile, else OLS t), ``Δα = α_reference −
    α_model`` [paired CI] on common sizes, both forms' PPL at 10× its largest size and
    whether they disagree; the undertrained runs per model; the frozen head's own LM
    (:func:`_head_reference`).  Returns a JSON-ready dict (``None`` for undefined numbers).
    """
    points = points.reset_index(drop=True)
    largest = int(points.loc[points["model"] == reference, "samples"].max()) if (points["model"] == reference).any() else None
    out: dict[str, Any] = {
        "reference_model": reference,
        "reference_variant": reference_variant,
        "confidence": confidence,
        "test_set": dict(test_set or {}),
        "resamples": resamples,
        "seeds": int(points["n_seeds"].max()) if "n_seeds" in points and len(points) else None,
    }
    if largest is None:
        out.update(available=False, reason=f"no {reference} runs in this study")
        return out
    at = points["samples"] == largest
    ref_i = _dev_choice(points, at & (points["model"] == reference) & (points["variant"] == reference_variant))
    ref = points.loc[ref_i]
    out.update(
        available=True,
        samples=largest,
        train_tokens=_num(ref.get("train_tokens")),
        reference_context_dim=int(ref["context_dim"]),
        reference_ppl=_num(ref["test_ppl"]),
        reference_ppl_ci=[_num(ref.get("test_ppl_ci_low")), _num(ref.get("test_ppl_ci_high"))],
    )
    others = [m for m in sorted(points["model"].unique(), key=model_rank) if m != reference]
    out["comparisons"] = _verdict_comparisons(points, point_boot, at, ref_i, others, confidence)
    out["best_baseline"] = _best_baseline(out["comparisons"])
    configurations = _verdict_configurations((reference, reference_variant, int(ref["context_dim"])), others, out["comparisons"])
    out["alphas"] = _verdict_fit_entries(fits, configurations, _alpha_entry)
    out["alpha_differences"] = _verdict_alpha_differences(points, point_boot, ref_i, out["comparisons"], confidence)
    out["extrapolations"] = _verdict_fit_entries(fits, configurations, _extrapolation_entry)
    out["undertrained"] = _undertrained_by_model(runs)
    out["head_reference"] = _head_reference(head_reference, head_boot, points, point_boot, ref_i, out, confidence)
    return out


def _head_reference(
    meta: Mapping[str, Any] | None,
    head_boot: np.ndarray | None,
    points: pd.DataFrame,
    point_boot: np.ndarray,
    ref_i: int,
    out: Mapping[str, Any],
    confidence: float,
) -> dict[str, Any] | None:
    """Each model at the largest size against the frozen head's own LM; ``None`` when the
    embeddings have no LM of their own.

    ``meta`` (the stand-in embeddings' metadata, ``token_embeddings.json``): when the
    embeddings come from a language model of their own (``source: bigram``) with a
    ``test_ppl`` on the same test tokens, every model at the largest size is compared with
    it: ``percent = 100·(PPL_model/PPL_head − 1)``, with a paired bootstrap interval when
    ``head_boot`` (``[B]`` head test loss on the same resamples as ``point_boot``) is
    given, else the model's own PPL interval against the head's point value; *below* /
    *above* when the whole interval is, else *within*.  That LM saw only the embedding
    slice, none of the study's training sets: a model not below it has learned nothing
    measurable beyond what the frozen head already carries.
    """
    if not meta or _num(meta.get("test_ppl")) is None:
        return None
    ppl = float(meta["test_ppl"])
    paired = head_boot is not None and np.size(head_boot) == point_boot.shape[0]
    rows = [(out["reference_model"], ref_i)] + [(c["model"], c["index"]) for c in out["comparisons"]]
    models = {}
    for model, i in rows:
        value = float(points.loc[i, "test_ppl"])
        if paired:
            lo, hi = percentile_interval(point_boot[:, i] - np.asarray(head_boot), confidence)
            ci = [100 * (math.exp(lo) - 1), 100 * (math.exp(hi) - 1)]
        else:
            low, high = _num(points.loc[i].get("test_ppl_ci_low")), _num(points.loc[i].get("test_ppl_ci_high"))
            ci = [None, None] if low is None or high is None else [100 * (low / ppl - 1), 100 * (high / ppl - 1)]
        pct = 100 * (value / ppl - 1)
        lo_pct, hi_pct = (pct, pct) if None in ci else ci
        where = "below" if hi_pct < 0 else "above" if lo_pct > 0 else "within"
        models[model] = {"ppl": value, "percent": pct, "percent_ci": ci, "place": where}
    return {
        "source": meta.get("source"),
        "test_ppl": ppl,
        "train_tokens": _num(meta.get("train_tokens")),
        "test_tokens": _num(meta.get("test_tokens")),
        "interval": "paired bootstrap" if paired else "the model's own interval",
        "models": models,
    }


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _pct_phrase(pct: float, ci: Sequence[float | None], other: str) -> str:
    """ "12.0 % [8.1, 16.2] below X" / "… above X" / "within [−2.0 %, +3.1 %] of X (no clear
    difference)" when the interval contains 0."""
    lo, hi = ci
    if lo is None or hi is None:
        word = "below" if pct < 0 else "above"
        return f"{abs(pct):.1f} % {word} {other} (no interval)"
    if hi < 0:
        return f"{abs(pct):.1f} % [{abs(hi):.1f}, {abs(lo):.1f}] below {other}"
    if lo > 0:
        return f"{pct:.1f} % [{lo:.1f}, {hi:.1f}] above {other}"
    return f"within [{lo:+.1f} %, {hi:+.1f} %] of {other} (no clear difference)"


def _fmt_ci(ci: Sequence[float | None], digits: int = 3) -> str:
    return "[n/a]" if None in ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _comparison_lines(v: Mapping[str, Any], name: str) -> list[str]:
    """The verdict's paired comparisons: against every model, then against the best baseline."""
    lines = []
    if v["comparisons"]:
        parts = [
            _pct_phrase(c["percent"], c["percent_ci"], f"{c['model']}" + (f" ({c['context_dim']}-d)" if c["context_dim"] else ""))
            for c in v["comparisons"]
        ]
        lines.append("Its test PPL is " + "; ".join(parts) + ".")
    best = v.get("best_baseline")
    if best:
        text = {"beats": "beats", "loses": "does not beat", "inconclusive": "cannot be told apart from"}[best["outcome"]]
        lines.append(
            f"{name} {text} the best baseline, {best['model']} (chosen on dev loss): "
            f"{_pct_phrase(best['percent'], best['percent_ci'], best['model'])}."
        )
    return lines


def _alpha_lines(alphas: list[Mapping[str, Any]]) -> list[str]:
    """The verdict's scaling exponents with intervals, which models' curves bend, and for
    which AICc cannot choose a form."""
    if not alphas:
        return []
    lines = [
        "Scaling exponent α of PPL = A·T^α (more negative = more gain from data; bootstrap intervals): "
        + "; ".join(
            f"{a['model']} {a['alpha']:.3f} {_fmt_ci(a['alpha_ci'])}" + ("" if a["interval"] == "bootstrap" else " (OLS t)")
            for a in alphas
        )
        + "."
    ]
    curved = [a["model"] for a in alphas if a.get("preferred_form") == "loss_form"]
    if curved:
        lines.append(
            f"For {', '.join(curved)} the loss form L = E + B·T^(−β) fits better than the power law (AICc lower by >= 2): "
            "their log-log curve bends, so α depends on the size range (see sliding_alpha.csv and model_fits.csv)."
        )
    too_few = [a["model"] for a in alphas if a.get("preferred_form") == TOO_FEW_POINTS]
    if too_few:
        lines.append(
            f"AICc cannot choose between the two forms for {', '.join(too_few)}: too few points (the loss form's AICc "
            f"needs at least {MIN_POINTS_AICC} sizes), so neither form is preferred."
        )
    return lines


def _signed(value: float) -> str:
    """``+0.050`` / ``-0.100``; a value that rounds to zero is ``+0.000``, never ``-0.000``."""
    return f"{round(value, 3) + 0.0:+.3f}"


def _signed_ci(ci: Sequence[float | None]) -> str:
    return "[n/a]" if None in ci else f"[{_signed(ci[0])}, {_signed(ci[1])}]"


def _alpha_difference_line(v: Mapping[str, Any]) -> list[str]:
    """``Δα = α_reference − α_model`` per compared model, with its paired interval."""
    diffs = v.get("alpha_differences") or []
    if not diffs:
        return []
    ref = v["reference_model"]
    parts = [
        f"{d['model']} {_signed(d['delta_alpha'])} {_signed_ci(d['delta_alpha_ci'])}"
        + (" (no clear difference)" if d.get("clear_difference") is False else "")
        for d in diffs
    ]
    return [
        f"Paired difference of the exponents, α_{ref} − α_model on their common sizes (the same resamples for both; "
        f"negative = {ref}'s PPL falls faster with data): " + "; ".join(parts) + "."
    ]


def _ppl_ci(values: Sequence[float | None]) -> str:
    """``"50.1 [48.0, 52.3]"`` of ``[ppl, low, high]``."""
    return f"{values[0]:.1f} {_fmt_ci(values[1:], 1)}"


def _extrapolation_phrase(e: Mapping[str, Any]) -> str:
    """One configuration's PPL at the extrapolation target: both forms when they disagree
    (or cannot be compared), else the preferred one (the power law without a preference)
    and whether the other agrees."""
    power, loss = e["power_law"], e["loss_form"]
    if loss[0] is None:
        return f"{e['model']} {_ppl_ci(power)} (power law; too few sizes for the loss form)"
    if e["forms_disagree"]:
        return f"{e['model']}: the two forms disagree, power law {_ppl_ci(power)} against loss form {_ppl_ci(loss)}"
    if e["forms_disagree"] is None:
        return f"{e['model']} power law {_ppl_ci(power)}, loss form {_ppl_ci(loss)} (no intervals to compare)"
    first, second = ("loss form", "power law") if e.get("preferred_form") == "loss_form" else ("power law", "loss form")
    chosen, other = (loss, power) if first == "loss form" else (power, loss)
    why = ", preferred by AICc" if e.get("preferred_form") in ("power_law", "loss_form") else ""
    return f"{e['model']} {_ppl_ci(chosen)} ({first}{why}; the {second}'s {_ppl_ci(other)} overlaps it)"


def _extrapolation_line(v: Mapping[str, Any]) -> list[str]:
    """Both forms' test PPL at 10× each configuration's largest size; neither quoted alone
    where their intervals are disjoint."""
    entries = v.get("extrapolations") or []
    if not entries:
        return []
    multiple = f"{entries[0]['multiple']:g}×"
    return [
        f"Extrapolated test PPL at {multiple} each model's largest training size (beyond the data, so the form decides; "
        "bootstrap intervals): " + "; ".join(_extrapolation_phrase(e) for e in entries) + "."
    ]


def _training_line(undertrained: list[Mapping[str, Any]]) -> str:
    """Which models had runs stopped by ``max_steps`` (their PPL an upper bound), or none."""
    under = [u for u in undertrained if u["undertrained"]]
    if not under:
        return "No run was undertrained: every trained model stopped by early stopping on dev loss."
    return (
        "Undertrained (stopped by max_steps, not by early stopping): "
        + ", ".join(f"{u['model']} {u['undertrained']}/{u['runs']} runs" for u in under)
        + "; their PPL is an upper bound."
    )


def _interval_line(v: Mapping[str, Any]) -> str:
    """How the verdict's intervals were made: bootstrap over test conversations (and seeds)."""
    conf = f"{v['confidence']:.0%}".replace("%", " %")
    ts = v.get("test_set") or {}
    seeds = v.get("seeds")
    return (
        f"Intervals: {conf} percentile bootstrap over the {ts.get('conversations', '?')} test conversations "
        f"({ts.get('targets', '?')} target tokens, {v.get('resamples') or '?'} resamples, the same resamples for every model)"
        + (
            f" and over the {seeds} training seeds per point."
            if seeds and seeds > 1
            else "; one training seed, so seed-to-seed variation is not included."
        )
    )


def verdict_markdown(v: Mapping[str, Any]) -> str:
    """The verdict as a few Markdown lines, every number taken from :func:`verdict`:
    headline, paired comparisons, scaling exponents and their paired differences,
    extrapolations, the frozen head, training, intervals."""
    name = v["reference_model"].upper() if v["reference_model"] == "cvfp" else v["reference_model"]
    if not v.get("available"):
        return f"# Verdict\n\nNo verdict: {v.get('reason')}.\n"
    tokens = f"{v['train_tokens']:,.0f}" if v.get("train_tokens") is not None else "?"
    lines = [
        "# Verdict",
        "",
        f"At {tokens} training tokens ({v['samples']} conversations), {name} ({v['reference_variant']}, "
        f"{v['reference_context_dim']}-d, chosen on dev) has test PPL {v['reference_ppl']:.1f} "
        f"{_fmt_ci(v['reference_ppl_ci'], 1)}.",
        *_comparison_lines(v, name),
        *_alpha_lines(v.get("alphas") or []),
        *_alpha_difference_line(v),
        *_extrapolation_line(v),
    ]
    if v.get("head_reference"):
        lines.append(_head_reference_line(v["head_reference"]))
    lines += [_training_line(v.get("undertrained", [])), "", _interval_line(v)]
    return "\n".join(lines) + "\n"


def _head_reference_line(head: Mapping[str, Any]) -> str:
    """The verdict's sentence on the frozen head's own LM (:func:`_head_reference`'s numbers)."""
    phrases = [_pct_phrase(m["percent"], m["percent_ci"], "it") for m in head["models"].values()]
    not_below = [name for name, m in head["models"].items() if m["place"] != "below"]
    return (
        f"Frozen-head reference: the stand-in embeddings' own {head['source']} LM, trained on "
        f"{head['train_tokens'] or 0:,.0f} tokens of the embedding slice (none of the study's training sets), "
        f"has test PPL {head['test_ppl']:.1f} on the same test tokens. Against it ({head['interval']}): "
        + "; ".join(f"{name} {phrase}" for name, phrase in zip(head["models"], phrases))
        + "."
        + (
            f" Not clearly below it: {', '.join(not_below)} — at this size they learn nothing measurable "
            "beyond what the frozen head already carries."
            if not_below
            else " Every model gets below it."
        )
    )


def verdict_html(markdown: str) -> str:
    """A standalone HTML page of :func:`verdict_markdown`'s text (the report shows HTML
    inline; Markdown would only be a download)."""
    body = []
    for line in markdown.strip().splitlines():
        if line.startswith("# "):
            body.append(f"<h2>{html.escape(line[2:])}</h2>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Verdict</title>'
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;line-height:1.45}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
