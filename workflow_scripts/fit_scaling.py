"""Rule fit_scaling: PPL = A·tokens^α per (variant, context_dim), with R², SE and 95 % CI."""

import pandas as pd

from newllm.io import write_csv
from newllm.runtime import get_logger
from newllm.scaling import fit_table

log = get_logger(snakemake.log[0])
fits = fit_table(pd.read_csv(snakemake.input.runs), ["variant", "context_dim"])
write_csv(snakemake.output[0], fits)
log.info("\n%s", fits.to_string(index=False))
