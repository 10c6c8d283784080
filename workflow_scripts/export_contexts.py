"""Rule export_contexts: per-layer contexts of every train, dev and test token (SPEC §6).

``cache[i] = F(c_{i-1}, x̃_i)`` for every layer with ``c_{-1} = 0``: the ContextBlock's
output *after processing token i*, from one solver for all three splits.  A solve that
does not reach tolerance is redone by the exact sequential recurrence (never fed to
Phase 2 unconverged); the cache metadata records which.
"""

import time

import numpy as np

from newllm.io import write_json, write_npy
from newllm.metrics import effective_rank
from newllm.phase1 import solve_contexts_jacobi, solve_contexts_sequential
from newllm.pipeline import build_model, load_stream, start_run


def solve(block, token_input, stream, cache_cfg, batch_size, log, split):
    """``(outputs [n, L, d_c], info)``; falls back to the sequential recurrence when the
    configured solver does not converge."""
    t0 = time.perf_counter()
    if cache_cfg["method"] == "jacobi":
        outputs, info = solve_contexts_jacobi(block, token_input, stream, cache_cfg["max_sweeps"], cache_cfg["tolerance"], batch_size)
    else:
        outputs, info = solve_contexts_sequential(block, token_input, stream)
    info["seconds"] = time.perf_counter() - t0
    if not info["converged"]:
        log.warning("%s: %s did not reach tolerance %.1e in %d sweeps (max residual %.2e): solving sequentially instead",
                    split, info["method"], cache_cfg["tolerance"], info["sweeps"], info["max_residual"])
        t0 = time.perf_counter()
        failed = info
        outputs, info = solve_contexts_sequential(block, token_input, stream)
        info.update(seconds=time.perf_counter() - t0, fallback_from=failed)
    return outputs, info


def main(smk) -> None:
    params, name, log, device, token_input = start_run(smk)
    cache_cfg = smk.params.cache
    block, _ = build_model(params, token_input, device, context_weights=smk.input.weights)
    block.eval()
    meta = {"run": params["run"], "method": cache_cfg["method"],
            "layout": "[tokens, num_layers, context_dim] float32; row i = every layer's output after processing token i"}
    for split in ("train", "dev", "test"):
        stream = load_stream(smk.input[split], device)
        outputs, info = solve(block, token_input, stream, cache_cfg, params["phase1"]["batch_size"], log, split)
        er = effective_rank(outputs[:, -1], seed=params["seed"])
        info.update(effective_rank=er, effective_rank_pct=100.0 * er / block.context_dim, tokens=int(stream.shape[0]))
        cache = outputs.cpu().numpy().astype(np.float32)
        write_npy(smk.output[split], cache)
        info["bytes"] = int(cache.nbytes)
        meta[split] = info
        log.info("%s: %s", split, info)
    meta["train_val_er_gap_pct"] = meta["train"]["effective_rank_pct"] - meta["dev"]["effective_rank_pct"]
    write_json(smk.output.meta, meta)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
