"""Rule export_contexts: per-layer contexts of every train and validation token (SPEC §6).

Both splits go through the same solver from the zero context; cache[i] is the output
of token i-1 (cache[0] = 0) so that Phase 2 predicts token i+1 from x̃_i and the
context of everything before token i.
"""

import time

import numpy as np

from newllm.io import write_json, write_npy
from newllm.metrics import effective_rank
from newllm.model import ContextBlock
from newllm.phase1 import context_cache_from_outputs, solve_contexts_jacobi, solve_contexts_sequential
from newllm.pipeline import load_stream, start_run
from newllm.runtime import load_weights

params, name, log, device, token_input = start_run(snakemake)
cache_cfg = snakemake.params.cache
model = params["model"]
block = ContextBlock(model["context_dim"], token_input.output_dim, model["num_layers"], model["ffn_layers"], model["activation"])
block.load_state_dict(load_weights(snakemake.input.weights))
block.to(device).eval()

meta = {"run": params["run"], "method": cache_cfg["method"], "layout": "[tokens, num_layers, context_dim] float32; row i = context produced at token i-1"}
for split, src, dest in (("train", snakemake.input.train, snakemake.output.train), ("validation", snakemake.input.validation, snakemake.output.validation)):
    stream = load_stream(src, device)
    t0 = time.perf_counter()
    if cache_cfg["method"] == "jacobi":
        outputs, info = solve_contexts_jacobi(block, token_input, stream, cache_cfg["max_sweeps"], cache_cfg["tolerance"], params["phase1"]["batch_size"])
    else:
        outputs, info = solve_contexts_sequential(block, token_input, stream)
    info["seconds"] = time.perf_counter() - t0
    er = effective_rank(outputs[:, -1], seed=params["seed"])
    info.update(effective_rank=er, effective_rank_pct=100.0 * er / block.context_dim, tokens=int(stream.shape[0]))
    cache = context_cache_from_outputs(outputs).cpu().numpy().astype(np.float32)
    write_npy(dest, cache)
    info["bytes"] = int(cache.nbytes)
    meta[split] = info
    if not info["converged"]:
        log.warning("%s contexts did not reach tolerance %.1e in %d sweeps (max residual %.2e)", split, cache_cfg["tolerance"], info["sweeps"], info["max_residual"])
    log.info("%s: %s", split, info)
meta["train_val_er_gap_pct"] = meta["train"]["effective_rank_pct"] - meta["validation"]["effective_rank_pct"]
write_json(snakemake.output.meta, meta)
