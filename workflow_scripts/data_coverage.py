"""Rule data_coverage: per training size, its tokens and the dev/test tokens unseen in training."""

import pandas as pd

from newllm.io import read_json, write_csv
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    rows = []
    for path in smk.input.train_meta:
        meta = read_json(path)
        row = {"samples": meta["samples"], "train_tokens": meta["num_tokens"]}
        for split in ("dev", "test"):
            cov = meta[f"{split}_coverage"]
            row.update(
                {
                    f"{split}_tokens": cov["validation_tokens"],
                    f"{split}_unseen_tokens": cov["unseen_tokens"],
                    f"{split}_unseen_fraction": cov["unseen_fraction"],
                    f"{split}_unseen_types": cov["unseen_types"],
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("samples")
    embedding = read_json(smk.input.embeddings_meta)
    table["embedding_source"] = embedding.get("source")
    table["embedding_train_tokens"] = embedding.get("train_tokens")
    write_csv(smk.output[0], table)
    log.info("\n%s", table.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
