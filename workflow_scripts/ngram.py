"""Rule ngram: interpolated Kneser-Ney n-gram LM on the run's training tokens (issue 9).

Counting, not training: no seed, no context_dim, no early stopping; the dev stream is
scored for the same table columns as the other models.  Writes ``lm/metrics.json``,
``lm/test_token_nll.npy`` (float32 ``[n_test - 1]``, nats) and ``lm/history.csv``.
"""

import time

import numpy as np
import torch

from newllm.baselines.ngram import KneserNeyLM
from newllm.data import read_stream
from newllm.io import write_npy
from newllm.metrics import perplexity
from newllm.pipeline import write_run_outputs
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    params, settings = smk.params.run, smk.params.baselines["ngram"]
    run = params["run"]
    label = f"ngram/{run['variant']}/samples{run['samples']}"
    log = get_logger(smk.log[0])
    train, dev, test = (
        np.asarray(read_stream(path), dtype=np.int64) for path in (smk.input.train, smk.input.dev, smk.input.test)
    )
    log.info(
        "%s: order %d, discount %s; %d train / %d dev / %d test tokens",
        label,
        settings["order"],
        settings["discount"],
        train.size,
        dev.size,
        test.size,
    )

    t0 = time.perf_counter()
    lm = KneserNeyLM(settings["order"], settings["discount"]).fit(train)
    fit_seconds = time.perf_counter() - t0
    scores = {}
    for split, stream in (("dev", dev), ("test", test)):
        t1 = time.perf_counter()
        nll, correct = lm.score_stream(stream)
        scores[split] = {
            "loss": float(nll.mean()),
            "accuracy": float(correct.mean()),
            "tokens": int(nll.size),
            "nll": nll,
            "seconds": time.perf_counter() - t1,
        }
    ngrams = lm.num_ngrams()
    summary = {
        "train_tokens": int(train.size - 1),
        "dev_loss": scores["dev"]["loss"],
        "dev_ppl": perplexity(scores["dev"]["loss"]),
        "dev_accuracy": scores["dev"]["accuracy"],
        "test_loss": scores["test"]["loss"],
        "test_ppl": perplexity(scores["test"]["loss"]),
        "test_accuracy": scores["test"]["accuracy"],
        "test_tokens": scores["test"]["tokens"],
        "parameters": lm.effective_parameters(),
        "parameters_note": "effective: stored n-gram probabilities + back-off weights of seen histories (nothing is trained)",
        "ngrams_per_order": ngrams,
        "discounts_per_order": [list(level.discounts) for level in lm.levels],
        "train_flops": 0.0,
        "train_flops_note": "counting: no gradient training",
        "train_seconds": fit_seconds,
        "dev_seconds": scores["dev"]["seconds"],
        "test_seconds": scores["test"]["seconds"],
        "steps": 0,
        "best_step": 0,
        "stopped_by": "closed_form",
        "undertrained": False,
        "tokens_processed": int(train.size),
    }
    history = [
        {
            "step": 0,
            "tokens": int(train.size),
            "train_loss": None,
            "dev_loss": summary["dev_loss"],
            "dev_ppl": summary["dev_ppl"],
            "dev_accuracy": summary["dev_accuracy"],
            "seconds": fit_seconds,
        }
    ]
    write_npy(smk.output.test_nll, scores["test"]["nll"].astype(np.float32))
    baseline = {"model": "ngram", "settings": settings}
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, history, torch.device("cpu"), baseline=baseline)
    log.info(
        "%s done in %.1f s: dev PPL %.2f, test PPL %.2f, test acc %.2f %%; n-grams per order %s",
        label,
        fit_seconds + scores["dev"]["seconds"] + scores["test"]["seconds"],
        summary["dev_ppl"],
        summary["test_ppl"],
        100 * summary["test_accuracy"],
        ngrams,
    )


if __name__ == "__main__":
    run_script(main, globals())
