"""Rule plot_analysis: sliding α, ER vs PPL, Effective Rank by context_dim, and test PPL
against parameters and training FLOPs, from the tables alone."""

import pandas as pd

from newllm.io import read_json
from newllm.plots import plot_effective_rank, plot_er_vs_ppl, plot_parameter_efficiency, plot_sliding_alpha
from newllm.script import run_script


def main(smk) -> None:
    runs = pd.read_csv(smk.input.runs)
    plot_sliding_alpha(pd.read_csv(smk.input.windows), smk.output.sliding)
    plot_er_vs_ppl(
        runs[runs["model"] == "cvfp"].reset_index(drop=True), read_json(smk.input.models)["linear"], smk.output.er_vs_ppl
    )
    plot_effective_rank(runs, smk.output.er_by_dim)
    plot_parameter_efficiency(pd.read_csv(smk.input.comparison), pd.read_csv(smk.input.baselines), smk.output.efficiency)


if __name__ == "__main__":
    run_script(main, globals())
