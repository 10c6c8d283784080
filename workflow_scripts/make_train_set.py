"""Rule make_train_set: the first N samples of the pool, and validation coverage for that N."""

import numpy as np

from newllm.data import DataError, check_disjoint, read_stream, validation_coverage, write_stream
from newllm.io import read_json
from newllm.runtime import get_logger

log = get_logger(snakemake.log[0])
samples = int(snakemake.wildcards.samples)
pool_meta = read_json(snakemake.input.pool_meta)
if samples > pool_meta["num_samples"]:
    raise DataError(f"sample size {samples} exceeds the training pool of {pool_meta['num_samples']} samples")
pool = read_stream(snakemake.input.pool)
train = np.asarray(pool[: pool_meta["sample_end"][samples - 1]])
validation = read_stream(snakemake.input.validation)
train_ids = pool_meta["sample_ids"][:samples]
val_ids = read_json(snakemake.input.validation_meta)["sample_ids"]
check_disjoint(train_ids, val_ids, f"training set samples{samples}")
coverage = validation_coverage(train, validation)
if snakemake.params.require_full_coverage and coverage["unseen_tokens"]:
    raise DataError(
        f"samples{samples}: {coverage['unseen_tokens']} validation tokens ({coverage['unseen_types']} ids) never occur "
        "in training; validation.require_full_coverage is true"
    )
write_stream(snakemake.output.tokens, train, {"samples": samples, "sample_ids": train_ids, "coverage": coverage})
log.info(
    "samples%d: %d tokens; %d validation tokens (%.2f %%) use ids unseen in training",
    samples, train.size, coverage["unseen_tokens"], 100 * coverage["unseen_fraction"],
)
