"""Rule phase1_diagnostics: collapse check, CVFP convergence check and quality band (SPEC §5)."""

import numpy as np
import torch

from newllm.diagnostics import convergence_passes, convergence_verdict, identity_check, quality_band
from newllm.io import read_json, write_json
from newllm.model import ContextBlock
from newllm.pipeline import load_stream, start_run
from newllm.runtime import load_weights

params, name, log, device, token_input = start_run(snakemake)
model = params["model"]
block = ContextBlock(model["context_dim"], token_input.output_dim, model["num_layers"], model["ffn_layers"], model["activation"])
block.load_state_dict(load_weights(snakemake.input.weights))
block.to(device).eval()
phase1 = read_json(snakemake.input.metrics)["summary"]
cache = read_json(snakemake.input.cache_meta)
val_stream = load_stream(snakemake.input.validation, device)

# contexts produced at tokens 0 … m-2 are cache rows 1 … m-1 (row i = context after token i-1)
val_cache = np.load(snakemake.input.validation_cache, mmap_mode="r")
contexts = torch.from_numpy(np.array(val_cache[1:, -1], dtype=np.float32)).to(device)
with torch.no_grad():
    # the current token's own embedding (last d_e slice of the input window)
    token_embed = token_input(val_stream, torch.arange(val_stream.shape[0] - 1, device=device))[:, -token_input.embed_dim :]
identity = identity_check(contexts, token_embed if model["context_dim"] == token_input.embed_dim else None)
series = convergence_passes(block, token_input, val_stream, snakemake.params.diagnostics["convergence_passes"], params["phase1"]["batch_size"])
convergence = convergence_verdict(series)
band = quality_band(cache["validation"]["effective_rank_pct"], cache["train"]["effective_rank_pct"])
result = {
    "run": params["run"],
    "train_effective_rank": cache["train"]["effective_rank"],
    "train_effective_rank_pct": cache["train"]["effective_rank_pct"],
    "val_effective_rank": cache["validation"]["effective_rank"],
    "val_effective_rank_pct": cache["validation"]["effective_rank_pct"],
    "effective_rank_tokens": {"train": min(cache["train"]["tokens"], 10_000), "validation": min(cache["validation"]["tokens"], 10_000)},
    "train_convergence": phase1["train_convergence"],
    "val_convergence": phase1.get("val_convergence"),
    "final_cvfp_loss": phase1["final_cvfp_loss"],
    "iterations": phase1["iterations"],
    "identity_check": identity,
    "cvfp_convergence_check": convergence,
    "quality": band,
}
write_json(snakemake.output[0], result)
log.info("%s: identity check %s; CVFP convergence %s (slope %.2e, std %.2e); val ER %.1f %% (%s)%s",
         name, "PASS" if identity["passed"] else "FAIL", convergence["verdict"], convergence["slope"], convergence["std"],
         band["val_er_pct"], band["band"], "; train-val ER gap > 5 points: over-fitting suspected" if band["overfitting_suspected"] else "")
