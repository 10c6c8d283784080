"""Rule make_heldout: the fixed dev and test files, the embedding slice and the ordered training pool.

Independent of the sample sizes (the training sets are prefixes of the pool; sizes
are checked against the pool at DAG time and in make_train_set), so adding a size
reruns nothing here.  One permutation seeded by ``validation.seed`` (not the training seed) makes four
pairwise-disjoint parts (newllm.data.split_samples): dev (selection), test (reporting),
the embedding slice (stand-in embeddings) and the training pool (nested sizes).
"""

from pathlib import Path

import numpy as np

from newllm.data import check_disjoint, load_corpus_cache, sample_ends, split_samples, token_stream, write_stream
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    tokens, offsets, manifest = load_corpus_cache(Path(smk.input.manifest).parent, corpus=dict(smk.params.corpus))
    ids = np.asarray(manifest["sample_ids"])
    seed = smk.params.seed
    parts = split_samples(manifest["num_samples"], smk.params.sizes, seed)
    counts = np.diff(offsets)
    outputs = {"dev": smk.output.dev, "test": smk.output.test, "embedding": smk.output.embedding_pool, "pool": smk.output.pool}
    for name, idx in parts.items():
        stream = token_stream(tokens, offsets, idx)
        write_stream(
            outputs[name],
            stream,
            {
                "split": name,
                "num_samples": int(idx.size),
                "sample_ids": ids[idx].tolist(),
                "sample_end": sample_ends(counts[idx]),
                "seed": seed,
            },
        )
        log.info("%s: %d samples, %d tokens", name, idx.size, stream.size)
    names = list(parts)
    for i, a in enumerate(names):  # a guard: disjoint by construction
        for b in names[i + 1 :]:
            check_disjoint(ids[parts[a]].tolist(), ids[parts[b]].tolist(), f"the {a} set", f"the {b} set")


if __name__ == "__main__":
    run_script(main, globals())
