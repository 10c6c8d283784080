"""Rule collect_runs: one tidy row per run (all Phase 1 and Phase 2 metrics) + history tables."""

import pandas as pd

from newllm.io import read_json, write_csv
from newllm.runtime import get_logger

log = get_logger(snakemake.log[0])
rows, diag_rows, p1_hist, p2_hist = [], [], [], []
inputs = snakemake.input
for p1_path, cache_path, p2_path, diag_path, h1_path, h2_path in zip(
    inputs.phase1, inputs.cache, inputs.phase2, inputs.diagnostics, inputs.phase1_history, inputs.phase2_history
):
    p1, cache, p2, diag = read_json(p1_path), read_json(cache_path), read_json(p2_path), read_json(diag_path)
    run, model = p1["run"], p1["config"]["model"]
    s1, s2 = p1["summary"], p2["summary"]
    identity = "PASS" if diag["identity_check"]["passed"] else "FAIL"
    verdict, band = diag["cvfp_convergence_check"]["verdict"], diag["quality"]["band"]
    rows.append({
        **run,
        **{k: model[k] for k in ("num_input_tokens", "num_layers", "ffn_layers", "activation")},
        "dist_reg_weight": p1["config"]["phase1"]["dist_reg_weight"],
        "diversity": p1["config"]["phase1"]["diversity"],
        "train_tokens": s1["train_tokens"],
        "val_tokens": cache["validation"]["tokens"],
        "phase1_iterations": s1["iterations"],
        "phase1_stopped_by": s1["stopped_by"],
        "phase1_final_cvfp_loss": s1["final_cvfp_loss"],
        "phase1_final_diversity_loss": s1["final_diversity_loss"],
        "train_convergence_rate": s1["train_convergence_rate"],
        "train_convergence": s1["train_convergence"],
        "val_convergence_rate": s1.get("val_convergence_rate"),
        "val_convergence": s1.get("val_convergence"),
        "phase1_iterate_er": s1["train_effective_rank"],
        "train_er": cache["train"]["effective_rank"],
        "train_er_pct": cache["train"]["effective_rank_pct"],
        "val_er": cache["validation"]["effective_rank"],
        "val_er_pct": cache["validation"]["effective_rank_pct"],
        "train_val_er_gap_pct": cache["train_val_er_gap_pct"],
        "cache_method": cache["method"],
        "cache_sweeps_train": cache["train"]["sweeps"],
        "cache_converged": cache["train"]["converged"] and cache["validation"]["converged"],
        "val_ppl": s2["val_ppl"],
        "val_accuracy": s2["val_accuracy"],
        "train_ppl": s2["train_ppl"],
        "best_epoch": s2["best_epoch"],
        "phase2_epochs": s2["epochs"],
        "context_block_parameters": s2["context_block_parameters"],
        "token_block_parameters": s2["token_block_parameters"],
        "phase1_tokens_per_s": s1["tokens_per_s"],
        "phase2_tokens_per_s": s2["tokens_per_s"],
        "phase1_seconds": s1["seconds"],
        "phase2_seconds": s2["train_seconds"],
        "identity_check": identity,
        "cvfp_verdict": verdict,
        "quality_band": band,
        "device": p2["provenance"]["device"],
    })
    checks = {f"{c['name']}": c["value"] for c in diag["identity_check"]["criteria"]}
    checks.update({f"{c['name']}_passed": c["passed"] for c in diag["identity_check"]["criteria"]})
    diag_rows.append({
        **{k: run[k] for k in ("variant", "context_dim", "samples")},
        "train_er_pct": diag["train_effective_rank_pct"],
        "val_er_pct": diag["val_effective_rank_pct"],
        "train_convergence": diag["train_convergence"],
        "val_convergence": diag["val_convergence"],
        "final_cvfp_loss": diag["final_cvfp_loss"],
        "iterations": diag["iterations"],
        "identity_check": identity,
        **checks,
        "cvfp_verdict": verdict,
        "cvfp_slope": diag["cvfp_convergence_check"]["slope"],
        "cvfp_std": diag["cvfp_convergence_check"]["std"],
        "quality_band": band,
        "overfitting_suspected": diag["quality"]["overfitting_suspected"],
    })
    for hist_path, bucket in ((h1_path, p1_hist), (h2_path, p2_hist)):
        frame = pd.read_csv(hist_path)
        for key in ("variant", "samples", "context_dim"):
            frame.insert(0, key, run[key])
        bucket.append(frame)
runs = pd.DataFrame(rows).sort_values(["variant", "context_dim", "samples"])
phase1 = pd.concat(p1_hist, ignore_index=True)
phase1["effective_rank_pct"] = 100.0 * phase1["effective_rank"] / phase1["context_dim"]
write_csv(snakemake.output.runs, runs)
write_csv(snakemake.output.diagnostics, pd.DataFrame(diag_rows).sort_values(["variant", "context_dim", "samples"]))
write_csv(snakemake.output.phase1_history, phase1)
write_csv(snakemake.output.phase2_history, pd.concat(p2_hist, ignore_index=True))
log.info("collected %d runs", len(runs))
