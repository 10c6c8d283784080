"""Scaling and comparison figures: test PPL against training tokens with the fitted forms,
PPL ratios, sliding-window exponents, effective rank, parameter efficiency and the forest
plot of the verdict's paired differences."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from newllm.plots.style import (
    VARIANT_STYLES,
    dodge,
    errorbars,
    log_axis,
    model_color,
    model_marker,
    panels,
    save_figure,
    series_label,
)
from newllm.study import model_rank, model_style

# ----------------------------------------------------------------------------- scaling
SCALING_X_MARGIN = 1.25
"""The scaling figure's x-axis ends this factor beyond the smallest and largest sizes: near
the data, so an extrapolated curve shows only its first step past the last point."""


def _alpha_label(fit: pd.DataFrame) -> str:
    """``": α=-0.123 [lo, hi]"`` of a series' fit row (bootstrap interval, else OLS t; ``""`` without a fit)."""
    if not len(fit):
        return ""
    f = fit.iloc[0]
    lo, hi = f.get("alpha_boot_ci_low", np.nan), f.get("alpha_boot_ci_high", np.nan)
    if not np.isfinite(lo):
        lo, hi = f.get("alpha_ci_low", np.nan), f.get("alpha_ci_high", np.nan)
    return f": α={f['alpha']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else "")


def _draw_points(ax, g: pd.DataFrame, color: str, marker: str) -> None:
    """Seed-mean test PPL against training tokens with bootstrap bars; hollow where a run
    was undertrained."""
    under = g.get("undertrained_runs", pd.Series(0, index=g.index)).fillna(0).to_numpy() > 0
    x, y = g["train_tokens"].to_numpy(float), g["test_ppl"].to_numpy(float)
    err = errorbars(y, g.get("test_ppl_ci_low", np.nan), g.get("test_ppl_ci_high", np.nan))
    ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, elinewidth=1, capsize=2)
    ax.plot(x[~under], y[~under], marker, color=color)
    if under.any():
        ax.plot(x[under], y[under], marker, markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.5)


def _preferred_curve(curves: pd.DataFrame, fit: pd.DataFrame, keys: tuple, x_max: float) -> tuple[str, pd.DataFrame]:
    """The fitted curve of one series in the form AICc prefers (``preferred_form`` of its fit
    row; the power law when neither is or the loss form was not fitted), cut at ``x_max``:
    ``(form, rows sorted by tokens)``."""
    model, variant, cdim = keys
    mine = curves[(curves["model"] == model) & (curves["variant"] == variant) & (curves["context_dim"] == cdim)]
    form = fit.iloc[0].get("preferred_form") if len(fit) else None
    if form != "loss_form" or not (mine["form"] == "loss_form").any():
        form = "power_law"
    c = mine[(mine["form"] == form) & (mine["tokens"] <= x_max * (1 + 1e-9))]
    return form, c.sort_values("tokens")


def _draw_fitted_curve(ax, c: pd.DataFrame, style: str, color: str) -> None:
    """A fitted curve (rows sorted by tokens): solid over the data, dashed beyond, with its band."""
    fitted = ~c["extrapolation"].astype(bool)
    inside, beyond = c[fitted], c[c["tokens"] >= c.loc[fitted, "tokens"].max()]
    ax.plot(inside["tokens"], inside["ppl"], style, color=color, lw=1.3)
    if len(beyond) > 1:
        ax.plot(beyond["tokens"], beyond["ppl"], "--", color=color, lw=1.0, alpha=0.8)
    if np.isfinite(c["ci_low"]).any():
        ax.fill_between(c["tokens"], c["ci_low"], c["ci_high"], color=color, alpha=0.12, lw=0)


def _draw_series(ax, points: pd.DataFrame, fits: pd.DataFrame, curves: pd.DataFrame, keys: tuple, x_max: float) -> str:
    """One (model, variant, context_dim) series of the scaling figure in the catalogue's
    colour and marker: points, the preferred fitted form and the legend entry; its label."""
    model, variant, cdim = keys
    g = points[(points["model"] == model) & (points["variant"] == variant) & (points["context_dim"] == cdim)]
    fit = fits[(fits["model"] == model) & (fits["variant"] == variant) & (fits["context_dim"] == cdim)]
    style = VARIANT_STYLES[sorted(points["variant"].unique()).index(variant) % len(VARIANT_STYLES)]
    color, marker = model_color(model), model_marker(model)
    form, c = _preferred_curve(curves, fit, keys, x_max)
    label = series_label(model, variant, cdim, points["variant"].nunique()) + _alpha_label(fit)
    label += " (loss form)" if form == "loss_form" and len(c) else ""
    _draw_points(ax, g.sort_values("train_tokens"), color, marker)
    ax.plot([], [], marker=marker, ls=style, color=color, label=label)  # legend: marker and line of the series
    if len(c):
        _draw_fitted_curve(ax, c, style, color)
    return label


def plot_scaling(
    points: pd.DataFrame, fits: pd.DataFrame, curves: pd.DataFrame, path: str | Path, head_reference: dict | None = None
) -> list[str]:
    """Test PPL vs training tokens (log-log) for every model, one panel per context_dim.

    Points: seed-mean test PPL with bootstrap 95 % bars (hollow: an undertrained run), in
    the model's catalogue colour and marker (:func:`newllm.study.model_style`).  Lines:
    per series the fitted form that AICc prefers (the loss form ``L = E + B·T^(−β)`` when
    it is preferred, else the power law ``PPL = A·T^α``) with its bootstrap 95 % band;
    solid over the data, dashed beyond.  The x-axis ends :data:`SCALING_X_MARGIN` beyond
    the smallest and largest sizes, so no curve runs far past the data (the tabled
    extrapolations, at most 10×, are in extrapolations.csv).  Models without a context
    dimension (n-gram, ``context_dim`` 0) appear in every panel.

    Args:
        points: the baselines table (``model``, ``variant``, ``context_dim``,
            ``train_tokens``, ``test_ppl``, ``test_ppl_ci_low/high``, ``undertrained_runs``).
        fits: the scaling fits (``alpha``, ``alpha_boot_ci_low/high`` or ``alpha_ci_*``,
            ``preferred_form``).
        curves: the fitted curves table (``form``, ``tokens``, ``ppl``, ``ci_low/high``,
            ``extrapolation``).
        head_reference: the stand-in embeddings' metadata; when it has a ``test_ppl`` (the
            frozen head's own LM, e.g. ``source: bigram``) a grey horizontal line marks it.
    """
    dims = sorted(d for d in points["context_dim"].unique() if d) or [0]
    x_min, x_max = points["train_tokens"].min() / SCALING_X_MARGIN, points["train_tokens"].max() * SCALING_X_MARGIN
    fig, axes = panels(dims)
    labels = []
    for ax, dim in zip(axes, dims):
        sel = points[(points["context_dim"] == dim) | (points["context_dim"] == 0)]
        series = sorted(sel.groupby(["model", "variant", "context_dim"]).groups, key=lambda k: (model_rank(k[0]), k[1]))
        labels += [_draw_series(ax, points, fits, curves, keys, x_max) for keys in series]
        labels += _draw_head_reference(ax, head_reference)
        if len(axes) > 1 or dim:
            ax.set_title(f"context_dim {dim}" if dim else "", fontsize=10)
        log_axis(ax, "x")
        log_axis(ax, "y", counts=False)
        ax.set_xlim(x_min, x_max)
        ax.set_xlabel("training tokens")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("test perplexity")
    has_under = "undertrained_runs" in points and (points["undertrained_runs"].fillna(0) > 0).any()
    fig.suptitle(
        "Scaling: the form AICc prefers per model, PPL = A · T^α unless marked (loss form) "
        "(band: bootstrap 95 %; dashed: beyond the data" + ("; hollow: undertrained run" if has_under else "") + ")",
        fontsize=10,
    )
    save_figure(fig, path)
    return labels


def _draw_head_reference(ax, head_reference: dict | None) -> list[str]:
    """A grey dotted line at the frozen head's own LM test PPL, when it has one; its label."""
    if not head_reference or head_reference.get("test_ppl") is None:
        return []
    label = f"frozen head's own {head_reference.get('source', '')} LM (embedding slice only)"
    ax.axhline(float(head_reference["test_ppl"]), color="0.5", ls=":", lw=1.2, label=label)
    return [label]


def plot_ppl_ratio(ratios: pd.DataFrame, path: str | Path) -> list[str]:
    """Each model's test PPL relative to cvfp at the same size, with bootstrap 95 % bars
    (log y; below 1 = better than cvfp); one panel per cvfp context_dim."""
    dims = sorted(ratios["reference_context_dim"].unique()) if len(ratios) else [0]
    n_variants = ratios["variant"].nunique() if len(ratios) else 1
    fig, axes = panels(dims)
    labels = []
    for ax, dim in zip(axes, dims):
        sel = ratios[ratios["reference_context_dim"] == dim]
        series = sorted(sel.groupby(["model", "variant", "context_dim"]).groups, key=lambda k: (model_rank(k[0]), k[1]))
        offsets = dodge(len(series))
        for off, (model, variant, cdim) in zip(offsets, series):
            g = sel[(sel["model"] == model) & (sel["variant"] == variant) & (sel["context_dim"] == cdim)].sort_values(
                "train_tokens"
            )
            label = series_label(model, variant, cdim, n_variants)
            y = g["ratio"].to_numpy(float)
            ax.errorbar(
                g["train_tokens"].to_numpy(float) * off,
                y,
                yerr=errorbars(y, g["ratio_ci_low"], g["ratio_ci_high"]),
                fmt="o-",
                color=model_color(model),
                capsize=2,
                lw=1,
                ms=4,
                label=label,
            )
            labels.append(label)
        ax.axhline(1.0, color="black", lw=0.8)
        log_axis(ax, "x")
        log_axis(ax, "y", counts=False)
        ax.set_xlabel("training tokens")
        ax.set_title(f"relative to cvfp {dim}-d", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test PPL / cvfp test PPL")
    fig.suptitle("Test perplexity relative to CVFP (bars: bootstrap 95 %; < 1: better than CVFP)", fontsize=10)
    save_figure(fig, path)
    return labels


def plot_sliding_alpha(windows: pd.DataFrame, path: str | Path) -> list[str]:
    """α per sliding window against the window's geometric-mean token count, with the
    bootstrap 95 % interval (±1.96 OLS SE where there is no bootstrap); a window without an
    interval (n = 2, or no data) gets no bar, never a zero-length one."""
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    labels = []
    n_variants = windows["variant"].nunique() if len(windows) else 1
    groups = (
        sorted(windows.groupby(["model", "variant", "context_dim"]).groups, key=lambda k: (model_rank(k[0]), k[1], k[2]))
        if len(windows)
        else []
    )
    for off, (model, variant, dim) in zip(dodge(len(groups), 0.01), groups):
        marker = model_marker(model)
        g = windows[(windows["model"] == model) & (windows["variant"] == variant) & (windows["context_dim"] == dim)]
        centre = np.sqrt(g["tokens_min"] * g["tokens_max"]).to_numpy(float) * off
        y = g["alpha"].to_numpy(float)
        lo = g["alpha_ci_low"].to_numpy(float) if "alpha_ci_low" in g else np.full(len(g), np.nan)
        hi = g["alpha_ci_high"].to_numpy(float) if "alpha_ci_high" in g else np.full(len(g), np.nan)
        se = g["alpha_stderr"].to_numpy(float)
        lo = np.where(np.isfinite(lo), lo, y - 1.96 * se)
        hi = np.where(np.isfinite(hi), hi, y + 1.96 * se)
        label = series_label(model, variant, dim, n_variants)
        ax.errorbar(centre, y, yerr=errorbars(y, lo, hi), marker=marker, capsize=3, color=model_color(model), label=label, lw=1)
        labels.append(label)
    log_axis(ax, "x")
    ax.set_xlabel("training tokens (window centre, geometric mean)")
    ax.set_ylabel("α in window (more negative = better scaling)")
    ax.set_title("Sliding-window scaling exponent (bars: 95 %)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if labels:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no window has enough sizes", ha="center", va="center", transform=ax.transAxes)
    save_figure(fig, path)
    return labels


def _residual_on_log_tokens(values: np.ndarray, log_tokens: np.ndarray) -> np.ndarray:
    """``values`` less their least-squares line in ln tokens (what the partial correlation
    of the prediction table correlates)."""
    design = np.column_stack([np.ones_like(log_tokens), log_tokens])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ coef


def plot_er_vs_ppl(runs: pd.DataFrame, correlation: dict | None, path: str | Path, er: str = "dev_er_pct") -> list[str]:
    """Within-size relation of dev Effective Rank and test loss for every cvfp run: both
    residualised on ln training tokens (the partial correlation of the prediction table,
    ``correlation``: its ``partial_r`` and interval in the title), one colour per training
    size.  A pooled fit across sizes is not drawn: it mixes the size trend into the relation."""
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    runs = runs[runs[er].notna() & runs["test_loss"].notna()] if er in runs else runs.iloc[:0]
    labels = []
    if len(runs) >= 3:
        lt = np.log(runs["train_tokens"].to_numpy(float))
        x = _residual_on_log_tokens(runs[er].to_numpy(float), lt)
        y = _residual_on_log_tokens(runs["test_loss"].to_numpy(float), lt)
        sizes = sorted(runs["samples"].unique())
        colours = plt.cm.viridis(np.linspace(0.85, 0.1, len(sizes)))
        for samples, colour in zip(sizes, colours):
            mask = (runs["samples"] == samples).to_numpy()
            ax.scatter(x[mask], y[mask], color=colour, marker=model_marker("cvfp"), label=f"{samples} conv.", alpha=0.85)
            labels.append(f"{samples} conv.")
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        ax.legend(fontsize=7, ncol=2)
    title = "Within-size relation of dev Effective Rank and test loss"
    if correlation and np.isfinite(correlation.get("partial_r", np.nan)):
        lo, hi = correlation.get("partial_r_ci_low", np.nan), correlation.get("partial_r_ci_high", np.nan)
        title += f"\npartial r = {correlation['partial_r']:.2f} [{lo:.2f}, {hi:.2f}]"
    ax.set_xlabel("dev Effective Rank (% of context_dim), less its ln-tokens trend")
    ax.set_ylabel("test loss (nats), less its ln-tokens trend")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    save_figure(fig, path)
    return labels


def plot_effective_rank(runs: pd.DataFrame, path: str | Path) -> list[str]:
    """Train and dev Effective Rank (absolute and % of context_dim) by context_dim for the
    runs with contexts (cvfp, untrained_context), mean over sizes and seeds, whiskers
    min–max; one bar group per (model, variant)."""
    runs = runs[runs["dev_er"].notna()] if "dev_er" in runs else runs.iloc[:0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    configs = sorted(runs.groupby(["model", "variant"]).groups, key=lambda k: (model_rank(k[0]), k[1])) if len(runs) else []
    dims = sorted(runs["context_dim"].unique()) if len(runs) else []
    width = 0.8 / max(2 * len(configs), 1)
    labels = []
    for ax, (suffix, title) in zip(axes, (("", "Effective Rank"), ("_pct", "Effective Rank (% of context_dim)"))):
        for v, (model, variant) in enumerate(configs):
            for s, split in enumerate(("train", "dev")):
                col = f"{split}_er{suffix}"
                part = runs[(runs["model"] == model) & (runs["variant"] == variant)]
                agg = part.groupby("context_dim")[col].agg(["mean", "min", "max"]).reindex(dims)
                x = np.arange(len(dims)) + (2 * v + s - len(configs) + 0.5) * width
                label = f"{model}{'' if len(set(c[1] for c in configs)) == 1 else ' ' + variant} {split}"
                variants = sorted({c[1] for c in configs})
                ax.bar(
                    x,
                    agg["mean"],
                    width,
                    yerr=[agg["mean"] - agg["min"], agg["max"] - agg["mean"]],
                    capsize=2,
                    color=model_color(model),
                    alpha=0.55 + 0.35 * s,
                    label=label,
                    hatch="" if variants.index(variant) == 0 else "//",
                )
                if suffix == "":
                    labels.append(label)
        ax.set_xticks(np.arange(len(dims)), [str(d) for d in dims])
        ax.set_xlabel("context_dim")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    if labels:
        axes[0].legend(fontsize=7)
    fig.suptitle("Effective Rank of the contexts by context_dim (lighter: train, darker: dev)", fontsize=10)
    save_figure(fig, path)
    return labels


def _draw_efficiency(axes, row: pd.Series, points: pd.DataFrame, color: str, marker: str, label: str) -> bool:
    """One configuration (a comparison.csv row) on both panels: PPL vs parameters at the
    largest size (left; returns whether it was drawn), PPL vs FLOPs over sizes (right), and
    crosses at the matched values."""
    drawn = False
    x = float(row.get("parameters", np.nan))
    if np.isfinite(x) and x > 0:
        y = float(row["test_ppl_largest"])
        low, high = [row.get("test_ppl_largest_ci_low", np.nan)], [row.get("test_ppl_largest_ci_high", np.nan)]
        err = errorbars(np.array([y]), low, high)
        axes[0].errorbar([x], [y], yerr=err, fmt=marker, color=color, capsize=2, label=label)
        drawn = True
    g = points[
        (points["model"] == row["model"]) & (points["variant"] == row["variant"]) & (points["context_dim"] == row["context_dim"])
    ]
    g = g[g["train_flops"] > 0].sort_values("train_flops") if "train_flops" in g else g.iloc[:0]
    if len(g):
        y = g["test_ppl"].to_numpy(float)
        err = errorbars(y, g.get("test_ppl_ci_low", np.nan), g.get("test_ppl_ci_high", np.nan))
        axes[1].errorbar(g["train_flops"], y, yerr=err, fmt=marker + "-", color=color, capsize=2, lw=1, ms=4)
    for ax, star, value in (
        (axes[0], "matched_parameters", "ppl_at_matched_parameters"),
        (axes[1], "matched_flops", "ppl_at_matched_flops"),
    ):
        if np.isfinite(row.get(star, np.nan)) and np.isfinite(row.get(value, np.nan)):
            ax.plot([row[star]], [row[value]], "x", color=color, ms=7)
    return drawn


def plot_parameter_efficiency(comparison: pd.DataFrame, points: pd.DataFrame, path: str | Path) -> list[str]:
    """What each model costs.  Left: test PPL at the largest size against trainable
    parameters, one marker per configuration.  Right: test PPL against training FLOPs
    over all sizes, one line per configuration.  Bars: bootstrap 95 %.  Dotted lines and
    crosses: the matched parameter count / FLOP budget of comparison.csv and each
    configuration's PPL there."""
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
    labels = []
    n_variants = comparison["variant"].nunique() if len(comparison) else 1
    for _, row in comparison.iterrows():
        key = (row["model"], row["variant"], row["context_dim"])
        label = series_label(*key, n_variants)
        if _draw_efficiency(axes, row, points, model_color(row["model"]), model_marker(row["model"]), label):
            labels.append(label)
    for ax, star in ((axes[0], "matched_parameters"), (axes[1], "matched_flops")):
        if star in comparison and comparison[star].notna().any():
            ax.axvline(float(comparison[star].dropna().iloc[0]), ls=":", color="black", lw=0.8)
        log_axis(ax, "x")
        log_axis(ax, "y", counts=False)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_xlabel("trainable parameters")
    axes[1].set_xlabel("training FLOPs (all sizes)")
    axes[0].set_ylabel("test perplexity (largest size)")
    axes[1].set_ylabel("test perplexity")
    if labels:
        axes[0].legend(fontsize=7)
    fig.suptitle(
        "What each model costs: test PPL vs parameters (largest size) and vs training FLOPs (× = matched value)", fontsize=10
    )
    save_figure(fig, path)
    return labels


# ----------------------------------------------------------------------------- per-run curves


def _forest_panel(ax, rows: pd.DataFrame, label_of, title: str) -> list[str]:
    """One forest panel: a row per comparison, the gain (nats per token) with its interval."""
    rows = rows.sort_values("_rank").reset_index(drop=True)
    labels = []
    for y, r in rows.iterrows():
        model = label_of(r)
        style = model_style(model)
        err = errorbars(np.array([r["gain"]]), np.array([r["gain_ci_low"]]), np.array([r["gain_ci_high"]]))
        ax.errorbar([r["gain"]], [y], xerr=err, fmt=style["marker"], color=style["color"], capsize=3)
        labels.append(style["label"])
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set(title=title, xlabel="gain in test loss (nats per token), 95 % CI")
    return labels


def plot_forest(paired: pd.DataFrame, path: str | Path) -> list[str]:
    """The verdict's paired differences at the largest training size (report ``forest.png``):
    left, cvfp's gain over every other model (positive: cvfp better; reset_context's row is
    the history gain); right, every model's gain over the frozen head's own LM.  Rows of the
    first variant and smallest context_dim; intervals from the paired hierarchical bootstrap."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    labels: list[str] = []
    if len(paired):
        sel = paired[(paired["variant"] == paired["variant"].iloc[0]) & (paired["samples"] == paired["samples"].max())]
        versus = sel[sel["comparison"].isin(["history", "over_model"])]
        versus = versus[versus["context_dim"] == versus["context_dim"].min()] if len(versus) else versus
        versus = versus.assign(_rank=versus["baseline"].map(model_rank))
        labels += _forest_panel(left, versus, lambda r: r["baseline"], "cvfp against each model")
        head = sel[sel["comparison"] == "over_head"]
        dims = head["context_dim"][head["context_dim"] > 0]
        head = head[head["context_dim"].isin([0, dims.min() if len(dims) else 0])]
        head = head.assign(_rank=head["model"].map(model_rank))
        labels += _forest_panel(right, head, lambda r: r["model"], "each model against the head's own LM")
        fig.suptitle(f"Paired differences at {int(sel['samples'].max())} conversations")
    save_figure(fig, path)
    return labels
