"""Report figures, drawn from the tidy tables alone (so they can be redrawn without training)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from newllm.io import atomic_path  # noqa: E402

RUN_KEYS = ["variant", "context_dim", "samples"]


def _save(fig, path: str | Path) -> None:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _series_label(variant: str, context_dim: int, variants: int) -> str:
    return f"{context_dim}-d" if variants == 1 else f"{variant} {context_dim}-d"


def plot_scaling(runs: pd.DataFrame, fits: pd.DataFrame, path: str | Path) -> None:
    """Validation PPL vs training tokens (log-log), one series per (variant, context_dim),
    each with its fitted line ``PPL = A·tokens^α`` and α ± 95 % CI in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    n_variants = runs["variant"].nunique()
    for (variant, dim), group in runs.groupby(["variant", "context_dim"]):
        group = group.sort_values("train_tokens")
        fit = fits[(fits["variant"] == variant) & (fits["context_dim"] == dim)]
        label = _series_label(variant, dim, n_variants)
        points = ax.plot(group["train_tokens"], group["val_ppl"], "o", label=None)[0]
        if len(fit):
            f = fit.iloc[0]
            x = np.geomspace(group["train_tokens"].min(), group["train_tokens"].max(), 50)
            ci = "" if np.isnan(f["alpha_ci_low"]) else f" [{f['alpha_ci_low']:.3f}, {f['alpha_ci_high']:.3f}]"
            label += f": α={f['alpha']:.3f}{ci}, R²={f['r2']:.3f}"
            ax.plot(x, f["A"] * x ** f["alpha"], "-", color=points.get_color())
        points.set_label(label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Scaling: PPL = A · tokens^α")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_phase1_curves(history: pd.DataFrame, path: str | Path) -> None:
    """Phase 1 per iteration for every run: CVFP loss, diversity loss, train convergence
    rate and Effective Rank (% of context_dim)."""
    panels = [
        ("cvfp_loss", "CVFP loss (MSE to previous iteration)", True),
        ("diversity_loss", "diversity loss", False),
        ("convergence_rate", "train convergence rate", False),
        ("effective_rank_pct", "Effective Rank (% of context_dim)", False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    n_variants = history["variant"].nunique()
    dims = sorted(history["context_dim"].unique())
    styles = dict(zip(dims, ["-", "--", ":", "-."] * 4))
    for (variant, dim, samples), run in history.groupby(RUN_KEYS):
        label = f"{_series_label(variant, dim, n_variants)}, {samples} samples"
        for ax, (column, title, log) in zip(axes.flat, panels):
            ax.plot(run["iteration"], run[column], styles[dim], label=label, linewidth=1.2)
            ax.set_title(title, fontsize=10)
            if log:
                ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("iteration (Jacobi sweep)")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("Phase 1: CVFP training")
    _save(fig, path)


def plot_phase2_curves(history: pd.DataFrame, path: str | Path) -> None:
    """Phase 2 learning curves: train and validation PPL per epoch for every run."""
    n_dims = history["context_dim"].nunique()
    n_variants = history["variant"].nunique()
    groups = list(history.groupby(["variant", "context_dim"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False, sharey=True)
    for ax, ((variant, dim), group) in zip(axes[0], groups):
        for samples, run in group.groupby("samples"):
            line = ax.plot(run["epoch"], run["val_ppl"], "o-", label=f"{samples} samples (val)")[0]
            ax.plot(run["epoch"], run["train_ppl"], "--", color=line.get_color(), alpha=0.6)
        ax.set_title(_series_label(variant, dim, n_variants) + " (dashed: train)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("perplexity")
    fig.suptitle("Phase 2: learning curves" + ("" if n_dims > 1 else ""))
    _save(fig, path)


def plot_sliding_alpha(windows: pd.DataFrame, path: str | Path) -> None:
    """α per sliding window against the window's geometric-mean token count, with ±1 SE
    bars, one series per (variant, context_dim)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    n_variants = windows["variant"].nunique()
    for (variant, dim), group in windows.groupby(["variant", "context_dim"]):
        centre = np.sqrt(group["tokens_min"] * group["tokens_max"])
        err = group["alpha_stderr"].fillna(0.0)
        ax.errorbar(centre, group["alpha"], yerr=err, marker="o", capsize=3, label=_series_label(variant, dim, n_variants))
    ax.set_xscale("log")
    ax.set_xlabel("training tokens (window centre, geometric mean)")
    ax.set_ylabel("α in window (more negative = better scaling)")
    ax.set_title("Sliding-window scaling exponent")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_er_vs_ppl(runs: pd.DataFrame, linear: dict, path: str | Path) -> None:
    """Validation PPL against validation Effective Rank (% of context_dim) for every run,
    with the fitted line ``PPL ≈ a + b·ER``; marker size grows with training tokens."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    n_variants = runs["variant"].nunique()
    sizes = 20 + 80 * (np.log(runs["train_tokens"]) - np.log(runs["train_tokens"]).min()) / max(np.ptp(np.log(runs["train_tokens"])), 1e-9)
    for (variant, dim), group in runs.groupby(["variant", "context_dim"]):
        ax.scatter(group["val_er_pct"], group["val_ppl"], s=sizes[group.index], label=_series_label(variant, dim, n_variants), alpha=0.8)
    if linear.get("b") is not None:
        x = np.linspace(runs["val_er_pct"].min(), runs["val_er_pct"].max(), 20)
        ax.plot(x, linear["a"] + linear["b"] * x, "k--", label=f"PPL ≈ {linear['a']:.0f} + {linear['b']:.1f}·ER (R²={linear['r2']:.2f})")
    ax.set_xlabel("validation Effective Rank (% of context_dim)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Phase 1 Effective Rank vs Phase 2 perplexity")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_effective_rank(runs: pd.DataFrame, path: str | Path) -> None:
    """Train and validation Effective Rank (absolute and % of context_dim) by context_dim,
    averaged over sample sizes with min–max bars, one group per variant."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    variants = sorted(runs["variant"].unique())
    dims = sorted(runs["context_dim"].unique())
    width = 0.8 / (2 * len(variants))
    for ax, (suffix, label) in zip(axes, (("", "Effective Rank"), ("_pct", "Effective Rank (% of context_dim)"))):
        for v, variant in enumerate(variants):
            for s, split in enumerate(("train", "val")):
                col = f"{split}_er" + suffix
                stats_ = runs[runs["variant"] == variant].groupby("context_dim")[col].agg(["mean", "min", "max"]).reindex(dims)
                x = np.arange(len(dims)) + (2 * v + s - len(variants) + 0.5) * width
                ax.bar(x, stats_["mean"], width, yerr=[stats_["mean"] - stats_["min"], stats_["max"] - stats_["mean"]],
                       capsize=2, label=f"{variant} {split}" if len(variants) > 1 else split, alpha=0.85)
        ax.set_xticks(np.arange(len(dims)), [str(d) for d in dims])
        ax.set_xlabel("context_dim")
        ax.set_title(label, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Effective Rank of the contexts by context_dim")
    _save(fig, path)


def plot_parameter_efficiency(comparison: pd.DataFrame, path: str | Path) -> None:
    """Best validation PPL against trained parameters (ContextBlock + TokenBlock) per
    configuration, annotated with PPL per million parameters."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for _, row in comparison.iterrows():
        ax.scatter(row["parameters"], row["best_val_ppl"], s=50)
        ax.annotate(f"{row['variant']} {row['context_dim']}-d\n{row['ppl_per_million_parameters']:.0f} PPL/M",
                    (row["parameters"], row["best_val_ppl"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trained parameters (ContextBlock + TokenBlock)")
    ax.set_ylabel("best validation perplexity")
    ax.set_title("Parameter efficiency")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def plot_repetition_stages(stages: pd.DataFrame, path: str | Path) -> None:
    """Convergence loss, context change rate and cyclic distance per epoch, one line per stage."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for stage, group in stages.groupby("stage"):
        for ax, col in zip(axes, ("convergence_loss", "change_rate", "cyclic_distance")):
            ax.plot(group["epoch"], group[col], "o-", label=f"stage {stage} ({stage}-token phrases)")
    for ax, title in zip(axes, ("convergence loss MSE(c_t, c_{t-L})", "context change rate mean ‖c_t − c_{t−1}‖", "cyclic distance mean ‖c_t − c_{t−L}‖")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Repetition study: staged training")
    _save(fig, path)


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
    _save(fig, path)


def plot_fixed_point_distances(distances: pd.DataFrame, summary: dict, path: str | Path) -> None:
    """Distribution of pairwise distances between the tokens' fixed points per protocol,
    with the collapse threshold (relative to the mean fixed-point norm)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for protocol, group in distances.groupby("protocol"):
        d = np.clip(group["distance"].to_numpy(), 1e-12, None)
        check = summary[protocol]["fixed_point_distances"]
        ax.hist(d, bins=np.geomspace(d.min(), d.max() * 1.01 + 1e-12, 30), alpha=0.6,
                label=f"{protocol}: median {check['median']:.2e}{' COLLAPSED' if check['collapsed'] else ''}")
        ax.axvline(check["threshold"] * check["mean_norm"], ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("pairwise distance between fixed points (dashed: collapse threshold)")
    ax.set_ylabel("token pairs")
    ax.set_title("Do different tokens reach different fixed points?")
    ax.legend(fontsize=8)
    _save(fig, path)
