"""Rule plot_repetition: repetition-study figures from its tables alone."""

import pandas as pd

from newllm.io import read_json
from newllm.plots import plot_fixed_point_distances, plot_repetition_stages, plot_repetition_topk

summary = read_json(snakemake.input.summary)
plot_repetition_stages(pd.read_csv(snakemake.input.stages), snakemake.output.stages)
plot_repetition_topk(pd.read_csv(snakemake.input.tokens), summary["config"]["converged_loss"], snakemake.output.tokens)
plot_fixed_point_distances(pd.read_csv(snakemake.input.distances), summary, snakemake.output.distances)
