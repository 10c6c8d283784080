"""Study-level analyses over the tidy tables (docs/method.md §8).  No torch import.

- :mod:`newllm.analysis.runs`: one tidy row per run from its metrics files (collect_runs).
- :mod:`newllm.analysis.windows`: α in windows of consecutive sizes, the change between
  windows with a standard error that accounts for shared points.
- :mod:`newllm.analysis.comparisons`: every model per size and its PPL relative to
  ``cvfp``; the paired difference of scaling exponents; one row per configuration with
  PPL at matched parameters and training FLOPs.
- :mod:`newllm.analysis.prediction`: do Phase 1 metrics predict test PPL?
- :mod:`newllm.analysis.verdicts`: the report's opening lines, from the numbers.

The modules import each other in that order only (runs ← comparisons ← verdicts), never
this package; the names below are the public ones every workflow script and test uses.
Scaling points are the seed means of :func:`newllm.uncertainty.seed_mean_points`; their
bootstrap matrix ``point_boot [B, P]`` follows the row order of the points table.
"""

from newllm.analysis.comparisons import (
    ALPHA_DIFFERENCE_COLUMNS,
    BASELINE_COLUMNS,
    COMPARISON_FIT_COLUMNS,
    COMPARISON_SETTINGS,
    PARAMETER_TOLERANCE,
    RATIO_COLUMNS,
    REFERENCE_MODEL,
    alpha_differences,
    baselines_table,
    comparison_table,
    matched_values,
    paired_alpha_difference,
    ratio_table,
)
from newllm.analysis.prediction import (
    LOG_LINEAR_COEFFICIENTS,
    NO_P_VALUES,
    PREDICTORS,
    effective_n,
    fisher_interval,
    intraclass_correlation,
    prediction_analysis,
)
from newllm.analysis.runs import (
    CONFIG_KEYS,
    POINT_KEYS,
    RUN_KEYS,
    SUMMARY_COLUMNS,
    run_key,
    run_rows,
    sort_models,
    tag_history,
)
from newllm.analysis.verdicts import verdict, verdict_html, verdict_markdown
from newllm.analysis.windows import MIN_WINDOW_POINTS, SLIDING_COLUMNS, sliding_window_fits, window_fits

__all__ = [
    "ALPHA_DIFFERENCE_COLUMNS",
    "BASELINE_COLUMNS",
    "COMPARISON_FIT_COLUMNS",
    "COMPARISON_SETTINGS",
    "CONFIG_KEYS",
    "LOG_LINEAR_COEFFICIENTS",
    "MIN_WINDOW_POINTS",
    "NO_P_VALUES",
    "PARAMETER_TOLERANCE",
    "POINT_KEYS",
    "PREDICTORS",
    "RATIO_COLUMNS",
    "REFERENCE_MODEL",
    "RUN_KEYS",
    "SLIDING_COLUMNS",
    "SUMMARY_COLUMNS",
    "alpha_differences",
    "baselines_table",
    "comparison_table",
    "effective_n",
    "fisher_interval",
    "intraclass_correlation",
    "matched_values",
    "paired_alpha_difference",
    "prediction_analysis",
    "ratio_table",
    "run_key",
    "run_rows",
    "sliding_window_fits",
    "sort_models",
    "tag_history",
    "verdict",
    "verdict_html",
    "verdict_markdown",
    "window_fits",
]
