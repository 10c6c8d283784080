"""Rule token_embeddings: the frozen [V, d_e] embedding matrix (bigram / word2vec / gpt2 / random).

Inputs: ``pool`` (the embedding slice, disjoint from every training set and from dev/test),
``dev`` and ``test`` streams.  The ``bigram`` source trains on the slice and scores itself
on dev/test; the others are scored as a head by ``newllm.bigram.fit_bigram_head``
when ``embeddings.score_head`` is true and the slice is not empty.  The JSON meta holds
``train_tokens`` (tokens the embeddings were trained on), ``dev_ppl``/``test_ppl`` of that
scoring model, and how it stopped.  ``test_token_nll`` holds the ``bigram`` source's own
per-target test NLL (``[n − 1]`` float32 nats, for the paired bootstrap against every
model); it is empty for the other sources, which have no LM of their own.
"""

import time

import numpy as np
import torch

from newllm.bigram import BigramConfig, fit_bigram_head, train_bigram_embeddings
from newllm.data import read_stream
from newllm.embeddings import check_embedding_config, gpt2_embeddings, random_embeddings, rescale_rows, word2vec_embeddings
from newllm.io import write_json, write_npy
from newllm.runtime import get_logger, save_weights, seed_everything
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    cfg, seed = smk.params.embeddings, smk.params.seed
    source = cfg["source"]
    check_embedding_config(source, cfg.get("embed_dim"))
    seed_everything(seed, smk.threads)
    bigram_cfg = BigramConfig.from_dict(cfg.get("bigram"))
    pool = np.asarray(read_stream(smk.input.pool), dtype=np.int64)  # the embedding slice only
    evals = {name: np.asarray(read_stream(getattr(smk.input, name)), dtype=np.int64) for name in ("dev", "test")}
    t0 = time.perf_counter()
    info = {"source": source, "slice_tokens": int(pool.size)}
    if source == "bigram":
        matrix, quality = train_bigram_embeddings(pool, cfg["embed_dim"], seed, bigram_cfg, evals, token_nll_of="test")
        test_token_nll = quality.pop("token_nll")  # the frozen head's own LM, per test target
        info.update(quality)  # train_tokens = the slice's training part
    else:
        if source == "gpt2":
            matrix = gpt2_embeddings(cfg["gpt2_checkpoint"])
            info.update(checkpoint=cfg["gpt2_checkpoint"], train_tokens=None)
        elif source == "word2vec":
            matrix, w2v = word2vec_embeddings(
                pool, cfg["embed_dim"], seed, epochs=cfg["word2vec_epochs"], window=cfg["word2vec_window"]
            )
            matrix = rescale_rows(matrix, cfg["row_norm"])
            info.update(w2v, train_tokens=int(pool.size), row_norm=cfg["row_norm"])
        else:
            matrix = rescale_rows(random_embeddings(cfg["embed_dim"], seed), cfg["row_norm"])
            info.update(row_norm=cfg["row_norm"], train_tokens=0)
        if cfg["score_head"] and pool.size:
            head = fit_bigram_head(matrix, pool, seed, bigram_cfg, evals)
            head["head_train_tokens"] = head.pop("train_tokens")
            info.update(head)
        else:
            info["model"] = "not scored (score_head false or empty slice)"
        test_token_nll = np.empty(0, dtype=np.float32)  # no LM of its own to pair with the models
    info.update(vocab_size=int(matrix.shape[0]), embed_dim=int(matrix.shape[1]), seed=seed, seconds=time.perf_counter() - t0)
    write_npy(smk.output.test_token_nll, test_token_nll)
    save_weights(smk.output.weights, {"embeddings": torch.from_numpy(matrix)}, {"source": source})
    write_json(smk.output.meta, info)
    log.info("token embeddings: %s", {k: v for k, v in info.items() if k != "history"})


if __name__ == "__main__":
    run_script(main, globals())
