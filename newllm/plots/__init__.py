"""Report figures, drawn from the tidy tables alone (so they can be redrawn without training).

Every figure is written as PNG (for the report) and as SVG beside it (same name, vector,
for papers).  Log axes carry readable tick labels ("20k", "1M"; PPL 20, 50, 100).  Models
keep one colour and one marker across figures, from the model catalogue
(:func:`newllm.study.model_style`: Okabe–Ito colours, safe for colour-blind readers); a
variant is told apart by its line style; a hollow marker is a point with at
least one undertrained run (stopped by ``max_steps``).  Each plotting function returns the
legend labels it drew (what a test can check).

The package selects matplotlib's non-interactive Agg backend before any of its modules
imports pyplot (figures are files; no display is needed).
"""

import matplotlib

matplotlib.use("Agg")

from newllm.plots.curves import (  # noqa: E402
    plot_phase1_curves,
    plot_training_curves,
    read_history,
    run_figure_name,
)
from newllm.plots.memory import plot_fixed_point_distances, plot_memory, plot_repetition_stages, plot_repetition_topk  # noqa: E402
from newllm.plots.scaling import (  # noqa: E402
    plot_effective_rank,
    plot_er_vs_ppl,
    plot_forest,
    plot_parameter_efficiency,
    plot_ppl_ratio,
    plot_scaling,
    plot_sliding_alpha,
)
from newllm.plots.style import errorbars, format_count  # noqa: E402

__all__ = [
    "errorbars",
    "format_count",
    "plot_effective_rank",
    "plot_er_vs_ppl",
    "plot_fixed_point_distances",
    "plot_forest",
    "plot_memory",
    "plot_parameter_efficiency",
    "plot_phase1_curves",
    "plot_ppl_ratio",
    "plot_repetition_stages",
    "plot_repetition_topk",
    "plot_scaling",
    "plot_sliding_alpha",
    "plot_training_curves",
    "read_history",
    "run_figure_name",
]
