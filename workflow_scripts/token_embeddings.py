"""Rule token_embeddings: the frozen [V, d_e] embedding matrix (gpt2 / word2vec / random)."""

import time

import numpy as np
import torch

from newllm.data import read_stream
from newllm.embeddings import gpt2_embeddings, random_embeddings, rescale_rows, word2vec_embeddings
from newllm.io import write_json
from newllm.runtime import get_logger, save_weights

log = get_logger(snakemake.log[0])
cfg = snakemake.params.embeddings
seed = snakemake.params.seed
t0 = time.perf_counter()
info = {"source": cfg["source"]}
if cfg["source"] == "gpt2":
    matrix = gpt2_embeddings(cfg["gpt2_checkpoint"])
    info["checkpoint"] = cfg["gpt2_checkpoint"]
elif cfg["source"] == "word2vec":
    pool = np.asarray(read_stream(snakemake.input.pool))  # the training pool only, never validation
    matrix, w2v = word2vec_embeddings(pool, cfg["embed_dim"], seed, epochs=cfg["word2vec_epochs"], window=cfg["word2vec_window"])
    matrix = rescale_rows(matrix, cfg["row_norm"])
    info.update(w2v, trained_on_tokens=int(pool.size), row_norm=cfg["row_norm"])
else:
    matrix = rescale_rows(random_embeddings(cfg["embed_dim"], seed), cfg["row_norm"])
    info["row_norm"] = cfg["row_norm"]
info.update(vocab_size=int(matrix.shape[0]), embed_dim=int(matrix.shape[1]), seed=seed, seconds=time.perf_counter() - t0)
save_weights(snakemake.output.weights, {"embeddings": torch.from_numpy(matrix)}, {"source": cfg["source"]})
write_json(snakemake.output.meta, info)
log.info("token embeddings: %s", info)
