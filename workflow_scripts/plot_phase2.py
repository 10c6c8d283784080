"""Rule plot_phase2: Phase 2 learning curves per run, from the history table alone."""

import pandas as pd

from newllm.plots import plot_phase2_curves

plot_phase2_curves(pd.read_csv(snakemake.input.history), snakemake.output[0])
