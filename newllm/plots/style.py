"""Shared figure style: saving as PNG and SVG, readable log axes, and each model's colour
and marker from the model catalogue (:func:`newllm.study.model_style`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from newllm.io import atomic_path
from newllm.study import model_style

VARIANT_STYLES = ["-", "--", ":", "-."]

MARKER_EDGES = {"lines.markeredgecolor": "0.2", "lines.markeredgewidth": 0.6, "scatter.edgecolors": "0.2"}
"""A thin dark edge on every marker, so the palette's light colours (Okabe–Ito yellow and
sky blue) stay visible on white; set for every figure of this package."""
plt.rcParams.update(MARKER_EDGES)


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


def series_label(model: str, variant: str, context_dim: int, variants: int) -> str:
    label = model if variants == 1 else f"{model} {variant}"
    return label + (f" {context_dim}-d" if context_dim else "")


def errorbars(centre: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray | None:
    """``[2, n]`` asymmetric error bars; NaN where the interval is undefined (matplotlib
    draws no bar there, never a zero-length one)."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    if not np.isfinite(low).any():
        return None
    return np.vstack([centre - low, high - centre])


def dodge(n: int, spread: float = 0.06) -> np.ndarray:
    """Multiplicative x offsets for ``n`` series on a log axis (centred on 1)."""
    return np.exp((np.arange(n) - (n - 1) / 2) * spread) if n > 1 else np.ones(1)


def panels(dims: Sequence[int]):
    fig, axes = plt.subplots(1, len(dims), figsize=(6.8 * len(dims), 4.8), squeeze=False, sharey=True)
    return fig, list(axes[0])
