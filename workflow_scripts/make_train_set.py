"""Rule make_train_set: the first N samples of the pool in the training seed's order, and dev/test coverage."""

from newllm.data import DataError, check_disjoint, read_stream, stream_subset, training_order, validation_coverage, write_stream
from newllm.io import read_json
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    samples, seed = int(smk.wildcards.samples), int(smk.wildcards.seed)
    pool_meta = read_json(smk.input.pool_meta)
    if samples > pool_meta["num_samples"]:
        raise DataError(f"sample size {samples} exceeds the training pool of {pool_meta['num_samples']} samples")
    chosen = training_order(pool_meta["num_samples"], seed)[:samples]
    train, sample_end = stream_subset(read_stream(smk.input.pool), pool_meta["sample_end"], chosen)
    train_ids = [pool_meta["sample_ids"][i] for i in chosen]
    meta = {"samples": samples, "seed": seed, "sample_ids": train_ids, "sample_end": sample_end}
    for split in ("dev", "test"):
        held_out = read_json(smk.input[f"{split}_meta"])["sample_ids"]
        check_disjoint(train_ids, held_out, f"training set seed{seed}/samples{samples}", f"the {split} set")
        coverage = validation_coverage(train, read_stream(smk.input[split]))
        meta[f"{split}_coverage"] = coverage
        log.info(
            "seed%d/samples%d: %d tokens; %d %s tokens (%.2f %%) use ids unseen in training",
            seed,
            samples,
            train.size,
            coverage["unseen_tokens"],
            split,
            100 * coverage["unseen_fraction"],
        )
        if smk.params.require_full_coverage and coverage["unseen_tokens"]:
            raise DataError(
                f"samples{samples}: {coverage['unseen_tokens']} {split} tokens ({coverage['unseen_types']} ids) never "
                "occur in training; validation.require_full_coverage is true"
            )
    meta["coverage"] = meta["test_coverage"]
    write_stream(smk.output.tokens, train, meta)


if __name__ == "__main__":
    run_script(main, globals())
