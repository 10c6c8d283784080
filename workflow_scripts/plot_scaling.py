"""Rule plot_scaling: every model's test PPL vs tokens with fits, bands and
extrapolations, and each model's PPL relative to cvfp, from the tables alone."""

import pandas as pd

from newllm.io import read_json
from newllm.plots import plot_ppl_ratio, plot_scaling
from newllm.script import run_script


def main(smk) -> None:
    plot_scaling(
        pd.read_csv(smk.input.baselines),
        pd.read_csv(smk.input.fits),
        pd.read_csv(smk.input.curves),
        smk.output.scaling,
        head_reference=read_json(smk.input.embeddings_meta),
    )
    plot_ppl_ratio(pd.read_csv(smk.input.ratios), smk.output.ratio)


if __name__ == "__main__":
    run_script(main, globals())
