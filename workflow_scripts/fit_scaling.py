"""Rule fit_scaling: PPL = A·T^α and L = E + B·T^(−β) per (model, variant, context_dim)
on the seed-mean points, with bootstrap intervals, AIC/BIC and extrapolations."""

import numpy as np
import pandas as pd

from newllm.io import write_csv
from newllm.runtime import get_logger
from newllm.scaling import fit_points, model_fit_table
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    points = pd.read_csv(smk.input.points)
    fits, extrapolations, curves = fit_points(points, np.load(smk.input.point_losses))
    write_csv(smk.output.fits, fits)
    write_csv(smk.output.model_fits, model_fit_table(fits))
    write_csv(smk.output.extrapolations, extrapolations)
    write_csv(smk.output.curves, curves)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log.info("\n%s", model_fit_table(fits).to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
