"""Rule comparisons: one row per configuration with its fit (α SE and CI), the numbers at
the largest size, and PPL at matched parameters and at matched training FLOPs."""

import numpy as np
import pandas as pd

from newllm.analysis import comparison_table
from newllm.io import write_csv
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    table = comparison_table(
        pd.read_csv(smk.input.runs), pd.read_csv(smk.input.points), np.load(smk.input.point_losses), pd.read_csv(smk.input.fits)
    )
    write_csv(smk.output[0], table)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log.info("\n%s", table.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
