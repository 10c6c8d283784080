"""Rule plot_analysis: sliding α, ER vs PPL, Effective Rank by context_dim, parameter efficiency."""

import pandas as pd

from newllm.io import read_json
from newllm.plots import plot_effective_rank, plot_er_vs_ppl, plot_parameter_efficiency, plot_sliding_alpha

runs = pd.read_csv(snakemake.input.runs)
plot_sliding_alpha(pd.read_csv(snakemake.input.windows), snakemake.output.sliding)
plot_er_vs_ppl(runs, read_json(snakemake.input.models)["linear"], snakemake.output.er_vs_ppl)
plot_effective_rank(runs, snakemake.output.er_by_dim)
plot_parameter_efficiency(pd.read_csv(snakemake.input.comparison), snakemake.output.efficiency)
