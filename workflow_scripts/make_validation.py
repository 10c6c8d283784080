"""Rule make_validation: the fixed validation file and the ordered training pool."""

from pathlib import Path

import numpy as np

from newllm.data import DataError, check_disjoint, load_corpus_cache, split_samples, token_stream, write_stream
from newllm.runtime import get_logger

log = get_logger(snakemake.log[0])
tokens, offsets, manifest = load_corpus_cache(Path(snakemake.input.manifest).parent)
ids = np.asarray(manifest["sample_ids"])
val_idx, pool_idx = split_samples(manifest["num_samples"], snakemake.params.num_samples, snakemake.params.seed)
if pool_idx.size < snakemake.params.max_train_samples:
    raise DataError(
        f"training pool has {pool_idx.size} samples after {val_idx.size} validation samples, "
        f"but sample_sizes asks for {snakemake.params.max_train_samples}; allowed: 1..{pool_idx.size}"
    )
validation = token_stream(tokens, offsets, val_idx)
val_meta = write_stream(
    snakemake.output.validation,
    validation,
    {"split": "validation", "num_samples": int(val_idx.size), "sample_ids": ids[val_idx].tolist(), "seed": snakemake.params.seed},
)
pool = token_stream(tokens, offsets, pool_idx)
counts = np.diff(offsets)[pool_idx]
sample_end = (np.cumsum(counts) + np.arange(pool_idx.size)).tolist()  # exclusive end of sample k (EOT separators)
write_stream(
    snakemake.output.pool,
    pool,
    {"split": "train_pool", "num_samples": int(pool_idx.size), "sample_ids": ids[pool_idx].tolist(), "sample_end": sample_end, "seed": snakemake.params.seed},
)
check_disjoint(ids[pool_idx].tolist(), val_meta["sample_ids"], "training pool")  # a guard: disjoint by construction
log.info("validation: %d samples, %d tokens; training pool: %d samples, %d tokens", val_idx.size, validation.size, pool_idx.size, pool.size)
