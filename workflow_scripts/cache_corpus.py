"""Rule cache_corpus: load the corpus with `datasets`, tokenize once, write the token cache."""

import shutil
import tempfile
from pathlib import Path

import datasets
from tqdm import tqdm

from newllm.data import build_corpus_cache, load_corpus_dataset
from newllm.io import sha256_file
from newllm.runtime import get_logger, progress_stream
from newllm.tokenizer import load_tokenizer

log = get_logger(snakemake.log[0])
datasets.disable_progress_bars()  # progress goes to the rule's log through tqdm below
corpus = dict(snakemake.params.corpus)
out_dir = Path(snakemake.output.manifest).parent
tokenizer_dir = Path(snakemake.input.vocab).parent
tokenizer = load_tokenizer(tokenizer_dir)
staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
try:
    dataset = load_corpus_dataset(corpus, staging, hub_rows=snakemake.input.get("hub_rows"))
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
                "tokenizer_sha256": {p.name: sha256_file(p) for p in (Path(snakemake.input.vocab), Path(snakemake.input.merges))},
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
