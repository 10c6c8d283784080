"""Memory figures: the repetition study (stages, top-k tokens, fixed-point distances) and
the two memory measures of a trained ContextBlock (perturbation probe, usable memory)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from newllm.plots.style import model_color, model_marker, save_figure
from newllm.study import model_rank, model_style


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
