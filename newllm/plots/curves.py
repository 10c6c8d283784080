"""Training curves: Phase 1 (loss, convergence, effective rank) per iteration and next-token
training (train and dev perplexity) per step, as study overviews and one figure per run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from newllm.plots.style import log_axis, save_figure
from newllm.study import RUN_KEYS, RunId, model_rank


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
