"""Rule plot_analysis: the verdict's paired differences (forest plot), sliding α, ER vs
test loss within size, Effective Rank by context_dim, and test PPL against parameters and
training FLOPs, from the tables alone."""

import pandas as pd

from newllm.plots import plot_effective_rank, plot_er_vs_ppl, plot_forest, plot_parameter_efficiency, plot_sliding_alpha
from newllm.script import run_script


def main(smk) -> None:
    runs = pd.read_csv(smk.input.runs)
    plot_sliding_alpha(pd.read_csv(smk.input.windows), smk.output.sliding)
    correlations = pd.read_csv(smk.input.correlations)
    dev_er = correlations[correlations["predictor"] == "dev_er_pct"].to_dict("records")
    plot_er_vs_ppl(runs[runs["model"] == "cvfp"].reset_index(drop=True), dev_er[0] if dev_er else None, smk.output.er_vs_ppl)
    plot_forest(pd.read_csv(smk.input.paired_gains), smk.output.forest)
    plot_effective_rank(runs, smk.output.er_by_dim)
    plot_parameter_efficiency(pd.read_csv(smk.input.comparison), pd.read_csv(smk.input.baselines), smk.output.efficiency)


if __name__ == "__main__":
    run_script(main, globals())
