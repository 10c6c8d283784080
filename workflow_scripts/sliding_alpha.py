"""Rule sliding_alpha: α in windows of consecutive sample sizes per (variant, context_dim)."""

import pandas as pd

from newllm.analysis import sliding_window_fits
from newllm.io import write_csv
from newllm.runtime import get_logger

log = get_logger(snakemake.log[0])
windows = sliding_window_fits(pd.read_csv(snakemake.input.runs), ["variant", "context_dim"], snakemake.params.window, snakemake.params.step)
write_csv(snakemake.output[0], windows)
log.info("\n%s", windows.to_string(index=False))
