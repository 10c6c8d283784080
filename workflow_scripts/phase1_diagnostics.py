"""Rule phase1_diagnostics: collapse check, CVFP convergence check, memory probe and
quality band on the dev split (docs/method.md §5)."""

import numpy as np
import torch

from newllm.diagnostics import convergence_passes, convergence_verdict, identity_check, memory_probe, quality_band
from newllm.io import read_json, write_json
from newllm.pipeline import build_model, load_stream, start_run
from newllm.script import run_script


def main(smk) -> None:
    params, name, log, device, token_input = start_run(smk)
    model, cfg = params["model"], smk.params.diagnostics
    block, _ = build_model(params, token_input, device, context_weights=smk.input.weights)
    block.eval()
    phase1 = read_json(smk.input.metrics)["summary"]
    cache = read_json(smk.input.cache_meta)
    dev_stream = load_stream(smk.input.dev, device)
    # cache row i = the context produced by processing token i (docs/method.md §6), paired with token i's embedding
    contexts = torch.from_numpy(np.array(np.load(smk.input.dev_cache, mmap_mode="r")[:, -1], dtype=np.float32)).to(device)
    with torch.no_grad():
        token_embed = token_input(dev_stream, torch.arange(dev_stream.shape[0], device=device))[:, -token_input.embed_dim :]
    identity = identity_check(contexts, token_embed if model["context_dim"] == token_input.embed_dim else None)
    series = convergence_passes(block, token_input, dev_stream, cfg["convergence_passes"], params["phase1"]["batch_size"])
    convergence = convergence_verdict(series)
    memory = memory_probe(block, token_input, dev_stream, cfg["memory_max_lag"], cfg["memory_positions"], params["seed"])
    band = quality_band(cache["dev"]["effective_rank_pct"], cache["train"]["effective_rank_pct"])
    result = {
        "run": params["run"],
        "train_effective_rank": cache["train"]["effective_rank"],
        "train_effective_rank_pct": cache["train"]["effective_rank_pct"],
        "val_effective_rank": cache["dev"]["effective_rank"],
        "val_effective_rank_pct": cache["dev"]["effective_rank_pct"],
        "effective_rank_tokens": {"train": min(cache["train"]["tokens"], 10_000), "dev": min(cache["dev"]["tokens"], 10_000)},
        "train_convergence": phase1["train_convergence"],
        "val_convergence": phase1.get("val_convergence"),
        "final_cvfp_loss": phase1["final_cvfp_loss"],
        "iterations": phase1["iterations"],
        "identity_check": identity,
        "cvfp_convergence_check": convergence,
        "memory_probe": memory,
        "quality": band,
    }
    write_json(smk.output[0], result)
    log.info(
        "%s: identity check %s; CVFP convergence %s (slope %.2e, std %.2e); memory: effect below 10 %% at lag %s, "
        "below 1 %% at lag %s; dev ER %.1f %% (%s)%s",
        name,
        "PASS" if identity["passed"] else "FAIL",
        convergence["verdict"],
        convergence["slope"],
        convergence["std"],
        memory["lag_below_10pct"],
        memory["lag_below_1pct"],
        band["val_er_pct"],
        band["band"],
        "; train-dev ER gap > 5 points: over-fitting suspected" if band["overfitting_suspected"] else "",
    )


if __name__ == "__main__":
    run_script(main, globals())
