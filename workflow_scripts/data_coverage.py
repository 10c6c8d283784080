"""Rule data_coverage: per training size, tokens and validation tokens unseen in training."""

import pandas as pd

from newllm.io import read_json, write_csv
from newllm.runtime import get_logger

log = get_logger(snakemake.log[0])
rows = []
for path in snakemake.input.train_meta:
    meta = read_json(path)
    rows.append({"samples": meta["samples"], "train_tokens": meta["num_tokens"], **meta["coverage"]})
table = pd.DataFrame(rows).sort_values("samples")
write_csv(snakemake.output[0], table)
log.info("\n%s", table.to_string(index=False))
