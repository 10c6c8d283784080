"""Rule comparisons: one row per (variant, context_dim) with fit, best run and efficiency."""

import pandas as pd

from newllm.analysis import comparison_table
from newllm.io import write_csv
from newllm.runtime import get_logger

log = get_logger(snakemake.log[0])
table = comparison_table(pd.read_csv(snakemake.input.runs), pd.read_csv(snakemake.input.fits))
write_csv(snakemake.output[0], table)
log.info("\n%s", table.to_string(index=False))
