"""Rule plot_phase1: Phase 1 curves per run, from the history table alone."""

import pandas as pd

from newllm.plots import plot_phase1_curves

plot_phase1_curves(pd.read_csv(snakemake.input.history), snakemake.output[0])
