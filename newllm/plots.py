"""Report figures, drawn from the tidy tables alone (so they can be redrawn without training).

Every figure is written as PNG (for the report) and as SVG beside it (same name, vector,
for papers).  Log axes carry readable tick labels ("20k", "1M"; PPL 20, 50, 100).  Models
keep one colour and one marker across figures, from the model catalogue
(:func:`newllm.study.model_style`: Okabe–Ito colours, safe for colour-blind readers); a
variant is told apart by its line style; a hollow marker is a point with at
least one undertrained run (stopped by ``max_steps``).  Each plotting function returns the
legend labels it drew (what a test can check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from newllm.io import atomic_path  # noqa: E402
from newllm.study import RUN_KEYS, RunId, model_rank, model_style  # noqa: E402

VARIANT_STYLES = ["-", "--", ":", "-."]


def save_figure(fig, path: str | Path, dpi: int = 120, tight: bool = True) -> list[Path]:
    """Write ``fig`` to ``path`` (PNG) and to ``path`` with suffix ``.svg``, atomically;
    close it.  ``tight=False`` skips the extra layout pass of ``bbox_inches="tight"`` (for
    figures made with a constrained layout).  Returns the two paths."""
    path = Path(path)
    written = []
    extra = {"bbox_inches": "tight"} if tight else {}
    for target, kwargs in ((path, {"dpi": dpi}), (path.with_suffix(".svg"), {})):
        with atomic_path(target, target.suffix) as tmp:
            fig.savefig(tmp, format=target.suffix.lstrip("."), **kwargs, **extra)
        written.append(target)
    plt.close(fig)
    return written


def svg_path(path: str | Path) -> str:
    """The SVG written beside a PNG figure by :func:`save_figure`."""
    return str(Path(path).with_suffix(".svg"))


def format_count(value: float, _pos=None) -> str:
    """Readable tick label of a count: 500, 2k, 20k, 1.5M, 3G."""
    if value <= 0 or not np.isfinite(value):
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def log_axis(ax, which: str = "x", counts: bool = True) -> None:
    """Log scale with ticks at 1, 2, 5 × 10^k and readable labels (counts: "20k"; else
    plain numbers "20", "0.5")."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=15))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(1, 10), numticks=15))
    axis.set_major_formatter(ticker.FuncFormatter(format_count if counts else (lambda v, _p: f"{v:g}")))
    axis.set_minor_formatter(ticker.NullFormatter())


def model_color(model: str) -> str:
    """The model's colour in every figure (the catalogue's, :func:`newllm.study.model_style`)."""
    return model_style(model)["color"]


def model_marker(model: str) -> str:
    """The model's marker in every figure (the catalogue's, :func:`newllm.study.model_style`)."""
    return model_style(model)["marker"]


def _series_label(model: str, variant: str, context_dim: int, variants: int) -> str:
    label = model if variants == 1 else f"{model} {variant}"
    return label + (f" {context_dim}-d" if context_dim else "")


def _errorbars(centre: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray | None:
    """``[2, n]`` asymmetric error bars; NaN where the interval is undefined (matplotlib
    draws no bar there, never a zero-length one)."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    if not np.isfinite(low).any():
        return None
    return np.vstack([centre - low, high - centre])


def _dodge(n: int, spread: float = 0.06) -> np.ndarray:
    """Multiplicative x offsets for ``n`` series on a log axis (centred on 1)."""
    return np.exp((np.arange(n) - (n - 1) / 2) * spread) if n > 1 else np.ones(1)


def _panels(dims: Sequence[int]):
    fig, axes = plt.subplots(1, len(dims), figsize=(6.8 * len(dims), 4.8), squeeze=False, sharey=True)
    return fig, list(axes[0])


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
    err = _errorbars(y, g.get("test_ppl_ci_low", np.nan), g.get("test_ppl_ci_high", np.nan))
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
    label = _series_label(model, variant, cdim, points["variant"].nunique()) + _alpha_label(fit)
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
    fig, axes = _panels(dims)
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
    fig, axes = _panels(dims)
    labels = []
    for ax, dim in zip(axes, dims):
        sel = ratios[ratios["reference_context_dim"] == dim]
        series = sorted(sel.groupby(["model", "variant", "context_dim"]).groups, key=lambda k: (model_rank(k[0]), k[1]))
        offsets = _dodge(len(series))
        for off, (model, variant, cdim) in zip(offsets, series):
            g = sel[(sel["model"] == model) & (sel["variant"] == variant) & (sel["context_dim"] == cdim)].sort_values(
                "train_tokens"
            )
            label = _series_label(model, variant, cdim, n_variants)
            y = g["ratio"].to_numpy(float)
            ax.errorbar(
                g["train_tokens"].to_numpy(float) * off,
                y,
                yerr=_errorbars(y, g["ratio_ci_low"], g["ratio_ci_high"]),
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
    for off, (model, variant, dim) in zip(_dodge(len(groups), 0.01), groups):
        marker = model_marker(model)
        g = windows[(windows["model"] == model) & (windows["variant"] == variant) & (windows["context_dim"] == dim)]
        centre = np.sqrt(g["tokens_min"] * g["tokens_max"]).to_numpy(float) * off
        y = g["alpha"].to_numpy(float)
        lo = g["alpha_ci_low"].to_numpy(float) if "alpha_ci_low" in g else np.full(len(g), np.nan)
        hi = g["alpha_ci_high"].to_numpy(float) if "alpha_ci_high" in g else np.full(len(g), np.nan)
        se = g["alpha_stderr"].to_numpy(float)
        lo = np.where(np.isfinite(lo), lo, y - 1.96 * se)
        hi = np.where(np.isfinite(hi), hi, y + 1.96 * se)
        label = _series_label(model, variant, dim, n_variants)
        ax.errorbar(centre, y, yerr=_errorbars(y, lo, hi), marker=marker, capsize=3, color=model_color(model), label=label, lw=1)
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
        err = _errorbars(np.array([y]), low, high)
        axes[0].errorbar([x], [y], yerr=err, fmt=marker, color=color, capsize=2, label=label)
        drawn = True
    g = points[
        (points["model"] == row["model"]) & (points["variant"] == row["variant"]) & (points["context_dim"] == row["context_dim"])
    ]
    g = g[g["train_flops"] > 0].sort_values("train_flops") if "train_flops" in g else g.iloc[:0]
    if len(g):
        y = g["test_ppl"].to_numpy(float)
        err = _errorbars(y, g.get("test_ppl_ci_low", np.nan), g.get("test_ppl_ci_high", np.nan))
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
        label = _series_label(*key, n_variants)
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
def run_figure_name(model: str, variant: str, samples: int, context_dim: int, seed: int) -> str:
    """Relative path of a run's figure in a per-run figure folder (the report pattern
    ``{model}/{variant}/samples{samples}_ctx{context_dim}_seed{seed}.png``)."""
    return RunId(model, variant, samples, context_dim, seed).label + ".png"


def read_history(path: str | Path) -> pd.DataFrame:
    """A history table (phase1_history.csv, training_history.csv); an empty one with the
    :data:`RUN_KEYS` columns when the study has no such runs (the file has no header)."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=RUN_KEYS)


def _run_title(ident: dict) -> str:
    """``"cvfp base, 16-d, 24 samples, seed 0"``."""
    return f"{ident['model']} {ident['variant']}, {ident['context_dim']}-d, {ident['samples']} samples, seed {ident['seed']}"


def save_run_figures(history: pd.DataFrame, run_dir: str | Path, draw) -> None:
    """One figure per run of a history table, ``draw(run rows, run identity) -> Figure``,
    saved under ``run_dir`` as :func:`run_figure_name`."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    for key, run in history.groupby(RUN_KEYS):
        ident = dict(zip(RUN_KEYS, key))
        save_figure(draw(run, ident), Path(run_dir) / run_figure_name(**ident), dpi=90, tight=False)


PHASE1_PANELS = [
    ("cvfp_loss", "CVFP loss (MSE to previous iteration)", True),
    ("diversity_loss", "diversity loss", False),
    ("convergence_rate", "train convergence rate", False),
    ("effective_rank_pct", "Effective Rank (% of context_dim)", False),
]


def _phase1_axes(axes, run: pd.DataFrame, label: str | None, style: str = "-") -> None:
    for ax, (column, title, log) in zip(axes.flat, PHASE1_PANELS):
        if column in run:
            ax.plot(run["iteration"], run[column], style, label=label, linewidth=1.2)
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")


def phase1_overview_runs(history: pd.DataFrame) -> pd.DataFrame:
    """The runs of the Phase 1 overview: one per sample size, of ``cvfp`` (or the first
    model when there is none) at the largest context_dim, first variant, lowest seed, so
    the panels stay readable for any study (every run has its own figure)."""
    if not len(history):
        return history
    model = "cvfp" if "cvfp" in set(history["model"]) else sorted(history["model"].unique())[0]
    runs = history[history["model"] == model]
    runs = runs[(runs["variant"] == runs["variant"].iloc[0]) & (runs["seed"] == runs["seed"].min())]
    return runs[runs["context_dim"] == runs["context_dim"].max()]


def plot_phase1_curves(history: pd.DataFrame, path: str | Path, run_dir: str | Path | None = None) -> list[str]:
    """Phase 1 per iteration (CVFP loss, diversity loss, train convergence rate, ER % of
    context_dim).  ``path``: an overview, one line per sample size
    (:func:`phase1_overview_runs`); returns its line labels.  ``run_dir``: one figure per
    run, named by :func:`run_figure_name` (the report lists them with
    model/variant/size/seed labels)."""
    history = history.copy()
    if "effective_rank_pct" not in history and "effective_rank" in history:
        history["effective_rank_pct"] = 100.0 * history["effective_rank"] / history["context_dim"]
    labels = []
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    overview = phase1_overview_runs(history)
    if len(overview):
        for samples, run in overview.groupby("samples"):
            labels.append(f"{samples} samples")
            _phase1_axes(axes, run, labels[-1])
        axes[0, 0].legend(fontsize=7, ncol=2)
        first = overview.iloc[0]
        fig.suptitle(
            f"Phase 1 of {first['model']}, {first['context_dim']}-d (variant {first['variant']}, seed {first['seed']}); "
            "every run: report entries",
            fontsize=10,
        )
    for ax in axes[1]:
        ax.set_xlabel("iteration (Jacobi sweep)")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    save_figure(fig, path)
    if run_dir is not None:
        save_run_figures(history, run_dir, _phase1_run_figure)
    return labels


def _phase1_run_figure(run: pd.DataFrame, ident: dict) -> plt.Figure:
    fig, axes = plt.subplots(2, 2, figsize=(8, 5.5), sharex=True, layout="constrained")
    _phase1_axes(axes, run, None)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Phase 1: {_run_title(ident)}", fontsize=10)
    return fig


def _curve_columns(history: pd.DataFrame) -> tuple[str, list[tuple[str, str]]]:
    """x column and ``(column, label)`` PPL series of a training history table."""
    x = next((c for c in ("step", "epoch", "iteration") if c in history), history.columns[-1])
    series = []
    for split in ("train", "dev", "val"):
        if f"{split}_ppl" in history:
            series.append((f"{split}_ppl", split))
        elif f"{split}_loss" in history:
            series.append((f"{split}_loss", split))
    return x, series


def _as_ppl(frame: pd.DataFrame, column: str) -> pd.Series:
    return np.exp(frame[column]) if column.endswith("_loss") else frame[column]


def plot_training_curves(history: pd.DataFrame, path: str | Path, run_dir: str | Path | None = None) -> list[str]:
    """Learning curves of every trained model (dev and train PPL per optimizer step or
    epoch).  ``path``: an overview, one panel per model (first variant, largest
    context_dim, first seed), one colour per size, solid dev, dashed train.  ``run_dir``:
    one figure per run (:func:`run_figure_name`)."""
    labels = []
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    if not len(history):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax.transAxes)
        save_figure(fig, path)
        return labels
    models = sorted(history["model"].unique(), key=model_rank)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        h = history[history["model"] == model]
        h = h[
            (h["variant"] == h["variant"].iloc[0]) & (h["context_dim"] == h["context_dim"].max()) & (h["seed"] == h["seed"].min())
        ]
        x, series = _curve_columns(h.dropna(axis=1, how="all"))
        for samples, run in h.groupby("samples"):
            color = None
            for column, split in series:
                line = ax.plot(
                    run[x],
                    _as_ppl(run, column),
                    "-" if split != "train" else "--",
                    color=color,
                    label=f"{samples} samples" if split != "train" else None,
                    lw=1,
                )[0]
                color = line.get_color()
        ax.set_title(f"{model} ({h['variant'].iloc[0]}, {h['context_dim'].iloc[0]}-d)", fontsize=9)
        ax.set_xlabel(x)
        log_axis(ax, "y", counts=False)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6)
        labels.append(model)
    axes[0, 0].set_ylabel("perplexity (solid dev, dashed train)")
    fig.suptitle("Learning curves (seed shown: the first; every run: report entries)", fontsize=10)
    save_figure(fig, path)
    if run_dir is not None:
        save_run_figures(history, run_dir, _training_run_figure)
    return labels


def _training_run_figure(run: pd.DataFrame, ident: dict) -> plt.Figure:
    x, series = _curve_columns(run.dropna(axis=1, how="all"))
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for column, split in series:
        ax.plot(run[x], _as_ppl(run, column), "-" if split != "train" else "--", label=split, lw=1.2)
    log_axis(ax, "y", counts=False)
    ax.set_xlabel(x)
    ax.set_ylabel("perplexity")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_run_title(ident), fontsize=9)
    return fig


# ----------------------------------------------------------------------------- repetition study
def plot_repetition_stages(stages: pd.DataFrame, path: str | Path) -> None:
    """Convergence loss, context change rate and cyclic distance per epoch, one line per stage."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for stage, group in stages.groupby("stage"):
        for ax, col in zip(axes, ("convergence_loss", "change_rate", "cyclic_distance")):
            ax.plot(group["epoch"], group[col], "o-", label=f"stage {stage} ({stage}-token phrases)")
    for ax, title in zip(
        axes,
        (
            "convergence loss MSE(c_t, c_{t-L})",
            "context change rate mean ‖c_t − c_{t−1}‖",
            "cyclic distance mean ‖c_t − c_{t−L}‖",
        ),
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Repetition study: staged training")
    save_figure(fig, path)


def plot_repetition_topk(tokens: pd.DataFrame, converged_loss: float, path: str | Path) -> None:
    """Per-token initial vs final convergence loss for both protocols (log-log); the
    dotted line is 'no change', the dashed line the convergence threshold."""
    protocols = list(tokens["protocol"].unique())
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 4.4), squeeze=False, sharey=True)
    for ax, protocol in zip(axes[0], protocols):
        group = tokens[tokens["protocol"] == protocol]
        conv = group["converged"].astype(bool)
        ax.scatter(group.loc[~conv, "initial_loss"], group.loc[~conv, "final_loss"], s=14, label="not converged")
        ax.scatter(group.loc[conv, "initial_loss"], group.loc[conv, "final_loss"], s=14, label="converged")
        lo = max(min(group["initial_loss"].min(), group["final_loss"].min()), 1e-12)
        hi = max(group["initial_loss"].max(), group["final_loss"].max())
        ax.plot([lo, hi], [lo, hi], ":", color="grey")
        ax.axhline(converged_loss, ls="--", color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{protocol}: {int(conv.sum())}/{len(group)} converged", fontsize=10)
        ax.set_xlabel("initial convergence loss")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("final convergence loss")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Repetition study: top-K tokens, sequential vs round-robin")
    save_figure(fig, path)


def plot_fixed_point_distances(distances: pd.DataFrame, summary: dict, path: str | Path) -> None:
    """Distribution of pairwise distances between the tokens' fixed points per protocol,
    with the collapse threshold (relative to the mean fixed-point norm)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for protocol, group in distances.groupby("protocol"):
        d = np.clip(group["distance"].to_numpy(), 1e-12, None)
        check = summary[protocol]["fixed_point_distances"]
        ax.hist(
            d,
            bins=np.geomspace(d.min(), d.max() * 1.01 + 1e-12, 30),
            alpha=0.6,
            label=f"{protocol}: median {check['median']:.2e}{' COLLAPSED' if check['collapsed'] else ''}",
        )
        ax.axvline(check["threshold"] * check["mean_norm"], ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("pairwise distance between fixed points (dashed: collapse threshold)")
    ax.set_ylabel("token pairs")
    ax.set_title("Do different tokens reach different fixed points?")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _history_positions(history: pd.Series) -> tuple[np.ndarray, list[str], float]:
    """x positions of history lengths ``k`` ("all" one octave past the largest ``k``)."""
    finite = sorted({int(h) for h in history if h != "all"})
    full = 2.0 * finite[-1] if finite else 1.0
    return np.array([full if h == "all" else float(h) for h in history]), [*map(str, finite), "all"], full


def plot_memory(curves: pd.DataFrame, usable: pd.DataFrame, path: str | Path) -> list[str]:
    """The two memory measures side by side (report ``memory.png``).

    Left: the perturbation probe, ``‖Δc_i‖`` relative to lag 1 per lag (log scale), per
    model at the smallest (dashed) and largest (solid) training size, mean over runs.
    Right: usable memory, the share of the history gain reached with ``k`` tokens of
    history, one line per training size (mean over seeds; viridis, light = small).
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.2))
    labels = []
    for model in sorted(curves["model"].unique(), key=model_rank) if len(curves) else []:
        sel = curves[curves["model"] == model]
        sizes = sorted(sel["samples"].unique())
        for samples, style in ((sizes[0], "--"), (sizes[-1], "-")) if len(sizes) > 1 else ((sizes[0], "-"),):
            mean = sel[sel["samples"] == samples].groupby("lag")["relative"].mean().clip(lower=1e-8)
            label = f"{model_style(model)['label']}, {samples} conv."
            left.semilogy(mean.index, mean.values, ls=style, color=model_color(model), label=label)
            labels.append(label)
    for frac in (0.1, 0.01):
        left.axhline(frac, color="grey", lw=0.8, ls=":")
    left.set(title="Perturbation probe (dev)", xlabel="lag k (tokens back)", ylabel="‖Δc_i‖ / lag-1 effect")
    if len(usable):
        x, ticks, full = _history_positions(usable["history"])
        table = usable.assign(x=x)
        sizes = sorted(table["samples"].unique())
        colours = plt.cm.viridis(np.linspace(0.85, 0.1, len(sizes)))
        for samples, colour in zip(sizes, colours):
            mean = table[table["samples"] == samples].groupby("x")["share_of_history_gain"].mean()
            right.plot(mean.index, mean.values, marker=model_marker("cvfp"), color=colour, label=f"{samples} conv.")
            labels.append(f"{samples} conv.")
        right.set_xscale("log", base=2)
        right.set_xticks([full if t == "all" else float(t) for t in ticks], ticks)
        for share in (0.9, 0.99):
            right.axhline(share, color="grey", lw=0.8, ls=":")
    right.set(title="Usable memory (test, cvfp)", xlabel="history k (tokens)", ylabel="share of the history gain")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    save_figure(fig, path)
    return labels


def _forest_panel(ax, rows: pd.DataFrame, label_of, title: str) -> list[str]:
    """One forest panel: a row per comparison, the gain (nats per token) with its interval."""
    rows = rows.sort_values("_rank").reset_index(drop=True)
    labels = []
    for y, r in rows.iterrows():
        model = label_of(r)
        style = model_style(model)
        err = _errorbars(np.array([r["gain"]]), np.array([r["gain_ci_low"]]), np.array([r["gain_ci_high"]]))
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
