"""Rule ngram: interpolated Kneser-Ney n-gram LM of every count-family model.

``ngram`` counts the run's training tokens; ``ngram_slice`` (param ``slice``) counts the
embedding slice, one ``<|endoftext|>`` and then the training tokens
(newllm.baselines.ngram.fit_and_score).  Counting, not training: no seed, no context_dim,
no early stopping; the dev stream is scored for the same table columns as the other models.
Writes ``lm/metrics.json``, ``lm/test_token_nll.npy`` (float32 ``[n_test - 1]``, nats) and
``lm/history.csv``.
"""

import numpy as np
import torch

from newllm.baselines.ngram import fit_and_score
from newllm.data import read_stream
from newllm.io import write_npy
from newllm.pipeline import write_run_outputs
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    params, settings = smk.params.run, smk.params.baselines["ngram"]
    run = params["run"]
    label = f"{run['model']}/{run['variant']}/samples{run['samples']}"
    log = get_logger(smk.log[0])
    train, dev, test = (read_stream(path) for path in (smk.input.train, smk.input.dev, smk.input.test))
    on_slice = getattr(smk.params, "slice", False)  # absent: the training tokens only
    slice_stream = read_stream(smk.input.embedding_pool) if on_slice else None
    lm, summary, history, test_nll = fit_and_score(
        train, dev, test, settings["order"], settings["discount"], slice_stream=slice_stream
    )
    log.info(
        "%s: order %d, discount %s; %d slice + %d train tokens counted (%d in all), %d dev / %d test tokens",
        label,
        settings["order"],
        settings["discount"],
        summary["slice_tokens"],
        train.size,
        summary["counted_tokens"],
        dev.size,
        test.size,
    )
    write_npy(smk.output.test_nll, test_nll.astype(np.float32))
    baseline = {"model": run["model"], "settings": settings, "slice": bool(on_slice)}
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, history, torch.device("cpu"), baseline=baseline)
    log.info(
        "%s done in %.1f s: dev PPL %.2f, test PPL %.2f, test acc %.2f %%; n-grams per order %s",
        label,
        summary["train_seconds"] + summary["dev_seconds"] + summary["test_seconds"],
        summary["dev_ppl"],
        summary["test_ppl"],
        100 * summary["test_accuracy"],
        summary["ngrams_per_order"],
    )


if __name__ == "__main__":
    run_script(main, globals())
