"""Rule baselines: every model per size (test PPL [CI], accuracy, parameters, FLOPs,
seconds) and each model's PPL relative to cvfp with bootstrap intervals."""

import numpy as np
import pandas as pd

from newllm.analysis import baselines_table, ratio_table
from newllm.io import write_csv
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    points = pd.read_csv(smk.input.points)
    table = baselines_table(points)
    ratios = ratio_table(points, np.load(smk.input.point_losses), smk.params.reference_variant)
    write_csv(smk.output.baselines, table)
    write_csv(smk.output.ratios, ratios)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        log.info("\n%s\n\n%s", table.to_string(index=False), ratios.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
