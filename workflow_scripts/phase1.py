"""Rule phase1: CVFP training of the ContextBlock for one run (SPEC §4)."""

from tqdm import tqdm

from newllm.model import build_blocks, count_parameters
from newllm.phase1 import Phase1Config, train_phase1
from newllm.pipeline import load_stream, run_checkpoint, start_run, write_run_outputs
from newllm.runtime import progress_stream, save_weights

CHECKPOINT_EVERY = 5  # iterations; a killed job resumes from the last checkpoint

params, name, log, device, token_input = start_run(snakemake)
stream = load_stream(snakemake.input.train, device)
val_stream = load_stream(snakemake.input.validation, device)
context_block, _ = build_blocks(params["model"], token_input.embed_dim)
context_block.to(device)
cfg = Phase1Config.from_dict(params["phase1"])
checkpoint = run_checkpoint(snakemake, snakemake.output.weights, every=CHECKPOINT_EVERY)
log.info("Phase 1 %s on %s: %d tokens, ContextBlock %d parameters, %s", name, device, stream.shape[0], count_parameters(context_block), cfg)

with tqdm(total=cfg.max_iterations, desc=f"phase1 {name}", unit="it", file=progress_stream(log), mininterval=10) as bar:
    def report(r):
        bar.update(1)
        log.info(
            "iteration %d: cvfp %.5f, diversity %.5f, convergence train %s / val %s, ER train %.2f / val %.2f, %.0f tok/s",
            r["iteration"], r["cvfp_loss"], r["diversity_loss"], r["convergence"], r["val_convergence"],
            r["effective_rank"], r["val_effective_rank"], r["tokens_per_s"],
        )

    if checkpoint.path.is_file():
        log.info("checkpoint found at %s: resuming if it matches this run's config and inputs", checkpoint.path)
    result = train_phase1(context_block, token_input, stream, cfg, val_stream=val_stream, seed=params["seed"], run_name=name,
                          on_iteration=report, checkpoint=checkpoint)

summary = {**result.summary, "train_tokens": int(stream.shape[0]), "context_block_parameters": count_parameters(context_block)}
save_weights(snakemake.output.weights, context_block.state_dict(), {"run": name})
write_run_outputs(snakemake.output.metrics, snakemake.output.history, params, summary, result.history, device)
checkpoint.path.unlink(missing_ok=True)
log.info("Phase 1 done: %s", summary)
