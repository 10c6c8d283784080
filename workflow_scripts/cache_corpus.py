"""Rule cache_corpus: load the corpus with `datasets`, tokenize once, write the token cache.

A local corpus is checked row by row before `datasets` reads it (newllm.corpus_check), so a
malformed line or a missing field fails with the file, line and field in the message
rather than a pyarrow traceback.
"""

import shutil
import tempfile
from pathlib import Path

import datasets
from tqdm import tqdm

from newllm.corpus_check import check_local_corpus
from newllm.data import build_corpus_cache, load_corpus_dataset
from newllm.io import sha256_file
from newllm.runtime import get_logger, progress_stream
from newllm.script import run_script
from newllm.tokenizer import load_tokenizer


def main(smk) -> None:
    log = get_logger(smk.log[0])
    datasets.disable_progress_bars()  # progress goes to the rule's log through tqdm below
    corpus = dict(smk.params.corpus)
    if corpus["source"] == "local":
        checked = check_local_corpus(corpus["path"], corpus)
        log.info("corpus files %s: %d rows read, %d usable samples", corpus["path"], checked.rows, checked.usable)
    out_dir = Path(smk.output.manifest).parent
    tokenizer = load_tokenizer(Path(smk.input.vocab).parent)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        dataset = load_corpus_dataset(corpus, staging, hub_rows=smk.input.get("hub_rows"))
        log.info("corpus %s (%s): %d rows", corpus["name"], corpus["source"], len(dataset))
        total = len(dataset) if not corpus.get("max_samples") else min(len(dataset), corpus["max_samples"])
        with tqdm(total=total, desc="tokenize", unit="samples", file=progress_stream(log), mininterval=5) as bar:
            manifest = build_corpus_cache(
                dataset,
                tokenizer,
                out_dir,
                id_field=corpus["id_field"],
                messages_field=corpus["messages_field"],
                text_field=corpus.get("text_field"),
                max_samples=corpus.get("max_samples"),
                progress=bar,
                extra_manifest={
                    "corpus": corpus,
                    "tokenizer_sha256": {p.name: sha256_file(p) for p in (Path(smk.input.vocab), Path(smk.input.merges))},
                },
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "%d samples, %d tokens (%d empty and %d duplicate samples dropped)",
        manifest["num_samples"],
        manifest["num_tokens"],
        manifest["dropped_empty"],
        manifest["dropped_duplicates"],
    )


if __name__ == "__main__":
    run_script(main, globals())
