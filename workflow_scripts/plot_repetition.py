"""Rule plot_repetition: repetition-study figures from its tables alone."""

import pandas as pd

from newllm.io import read_json
from newllm.plots import plot_fixed_point_distances, plot_repetition_stages, plot_repetition_topk
from newllm.script import run_script


def main(smk) -> None:
    summary = read_json(smk.input.summary)
    plot_repetition_stages(pd.read_csv(smk.input.stages), smk.output.stages)
    plot_repetition_topk(pd.read_csv(smk.input.tokens), summary["config"]["converged_loss"], smk.output.tokens)
    plot_fixed_point_distances(pd.read_csv(smk.input.distances), summary, smk.output.distances)


if __name__ == "__main__":
    run_script(main, globals())
