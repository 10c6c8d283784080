"""Rule fit_scaling: PPL = A·T^α and L = E + B·T^(−β) per (model, variant, context_dim)
on the seed-mean points, with bootstrap intervals, AIC/AICc/BIC, extrapolations to 2× and
10× each configuration's largest size, and the paired differences of α against cvfp."""

import numpy as np
import pandas as pd

from newllm.analysis import alpha_differences
from newllm.io import write_csv
from newllm.runtime import get_logger
from newllm.scaling import fit_points, model_fit_table
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    points = pd.read_csv(smk.input.points)
    point_losses = np.load(smk.input.point_losses)
    fits, extrapolations, curves = fit_points(points, point_losses)
    differences = alpha_differences(points, point_losses, smk.params.reference_variant)
    write_csv(smk.output.fits, fits)
    write_csv(smk.output.model_fits, model_fit_table(fits))
    write_csv(smk.output.extrapolations, extrapolations)
    write_csv(smk.output.curves, curves)
    write_csv(smk.output.alpha_differences, differences)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log.info("\n%s", model_fit_table(fits).to_string(index=False))
        log.info("\n%s", differences.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
