"""Rule sliding_alpha: α in windows of consecutive sizes per (model, variant, context_dim),
the change between windows with a covariance-aware SE and bootstrap intervals."""

import numpy as np
import pandas as pd

from newllm.analysis import CONFIG_KEYS, sliding_window_fits
from newllm.io import write_csv
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    windows = sliding_window_fits(
        pd.read_csv(smk.input.points),
        CONFIG_KEYS,
        smk.params.window,
        smk.params.step,
        ppl="test_ppl",
        boot=np.load(smk.input.point_losses),
    )
    write_csv(smk.output[0], windows)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log.info("\n%s", windows.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
