"""Rule phase2: TokenBlock training on cached contexts with the tied frozen head (SPEC §7)."""

from tqdm import tqdm

from newllm.model import build_blocks, count_parameters
from newllm.phase2 import Phase2Config, train_phase2
from newllm.pipeline import load_context_cache, load_stream, run_checkpoint, start_run, write_run_outputs
from newllm.runtime import progress_stream, save_weights

CHECKPOINT_EVERY = 1  # epochs; a killed job resumes from the last checkpoint

params, name, log, device, token_input = start_run(snakemake)
run = params["run"]
context_block, token_block = build_blocks(params["model"], token_input.embed_dim)
token_block.to(device)
cfg = Phase2Config.from_dict({**params["phase2"], "chunk_tokens": params["phase2"].get("chunk_tokens") or (4096 if device.type == "cuda" else 32)})
train_stream = load_stream(snakemake.input.train, device)
val_stream = load_stream(snakemake.input.validation, device)
train_cache = load_context_cache(snakemake.input.train_cache, device)
val_cache = load_context_cache(snakemake.input.validation_cache, device)
for split, stream, cache in (("train", train_stream, train_cache), ("validation", val_stream, val_cache)):
    if cache.shape[0] != stream.shape[0] or cache.shape[2] != run["context_dim"]:
        raise ValueError(f"{split} context cache has shape {tuple(cache.shape)}, expected ({stream.shape[0]}, L, {run['context_dim']}); rerun export_contexts")
log.info("Phase 2 %s on %s: %d train / %d validation tokens, TokenBlock %d parameters, %s",
         name, device, train_stream.shape[0], val_stream.shape[0], count_parameters(token_block), cfg)

with tqdm(total=cfg.max_epochs * (train_stream.shape[0] - 1), desc=f"phase2 {name}", unit="tok", unit_scale=True,
          file=progress_stream(log), mininterval=10) as bar:
    def on_epoch(r):
        log.info("epoch %d: train PPL %.1f, val PPL %.1f, val acc %.2f %%, %.0f tok/s", r["epoch"], r["train_ppl"], r["val_ppl"], 100 * r["val_accuracy"], r["tokens_per_s"])

    checkpoint = run_checkpoint(snakemake, snakemake.output.weights, every=CHECKPOINT_EVERY)
    if checkpoint.path.is_file():
        log.info("checkpoint found at %s: resuming if it matches this run's config and inputs", checkpoint.path)
    history, summary = train_phase2(token_block, token_input, train_stream, train_cache, val_stream, val_cache, cfg,
                                    seed=params["seed"], run_name=name, on_batch=bar.update, on_epoch=on_epoch,
                                    checkpoint=checkpoint,
                                    on_oom=lambda micro: log.warning("out of memory: retrying with micro-batches of %d tokens "
                                                                     "(gradient accumulation, same optimizer step)", micro))

summary.update(
    context_block_parameters=count_parameters(context_block),
    token_block_parameters=count_parameters(token_block),
    reported_val_ppl="best epoch's validation PPL; the epoch is chosen on the same validation set",
)
save_weights(snakemake.output.weights, token_block.state_dict(), {"run": name, "best_epoch": str(summary["best_epoch"])})
write_run_outputs(snakemake.output.metrics, snakemake.output.history, params, summary, history, device)
checkpoint.path.unlink(missing_ok=True)
log.info("Phase 2 done: val PPL %.2f (epoch %d), val acc %.2f %%", summary["val_ppl"], summary["best_epoch"], 100 * summary["val_accuracy"])
