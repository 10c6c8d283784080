"""Command-line tools.

``newllm-fit TABLE.csv`` fits ``PPL = A · tokens^α`` and the loss form
``L = E + B·tokens^(−β)`` (with AIC/BIC and the preferred form; >= 4 sizes) to any CSV of
runs, e.g. published numbers, with the same functions the pipeline uses, and prints the
fit table (with both forms' PPL at 2x and 10x the largest size and the OLS prediction interval)
and, with ``--window`` (>= 4 sizes), the sliding-window fits.  Rows of a group are the
points (no bootstrap: an external table has no per-conversation losses)::

    newllm-fit published.csv --group config --tokens tokens --ppl ppl --window 4
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from newllm.analysis import sliding_window_fits
from newllm.scaling import fit_table


def fit_main(argv: list[str] | None = None) -> int:
    """Entry point of ``newllm-fit``; returns the process exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="newllm-fit", description="Fit PPL = A * tokens^alpha per group of a CSV table.")
    parser.add_argument("table", help="CSV with one row per run")
    parser.add_argument("--group", nargs="+", default=["config"], help="column(s) naming a configuration (default: config)")
    parser.add_argument("--tokens", default="tokens", help="column of training tokens (default: tokens)")
    parser.add_argument("--ppl", default="ppl", help="column of validation perplexity (default: ppl)")
    parser.add_argument("--window", type=int, help="also fit windows of this many consecutive sizes (>= 4)")
    parser.add_argument("--step", type=int, default=1, help="window step (default 1)")
    parser.add_argument("--output", help="also write the fit table to this CSV")
    args = parser.parse_args(argv)
    runs = pd.read_csv(args.table)
    missing = [c for c in [*args.group, args.tokens, args.ppl] if c not in runs.columns]
    if missing:
        print(f"newllm-fit: column(s) {missing} not in {args.table}; columns are {list(runs.columns)}", file=sys.stderr)
        return 2
    try:
        fits = fit_table(runs, args.group, tokens=args.tokens, ppl=args.ppl)
        windows = sliding_window_fits(runs, args.group, args.window, args.step, args.tokens, args.ppl) if args.window else None
    except ValueError as err:
        print(f"newllm-fit: {err}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(fits.to_string(index=False))
        if windows is not None:
            print(f"\nsliding windows of {args.window} sizes, step {args.step}:")
            print(windows.to_string(index=False))
    if args.output:
        fits.to_csv(args.output, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(fit_main())
