"""Rule plot_scaling: PPL vs tokens with fitted lines, from the tables alone."""

import pandas as pd

from newllm.plots import plot_scaling

plot_scaling(pd.read_csv(snakemake.input.runs), pd.read_csv(snakemake.input.fits), snakemake.output[0])
