"""Rule phase2: TokenBlock training on cached contexts with the tied frozen head (docs/method.md §7).

Selects on dev (early stopping, best step), reports on test.  A model without a context
cache among the inputs (no_context) trains the same TokenBlock on zero contexts.
"""

from tqdm import tqdm

from newllm.io import read_json, write_npy
from newllm.phase2 import Phase2Config, Split, evaluate, final_summary, train_phase2
from newllm.pipeline import (
    build_model,
    load_context_cache,
    load_stream,
    run_checkpoint,
    run_precision,
    start_run,
    write_run_outputs,
)
from newllm.runtime import progress_stream, save_weights
from newllm.script import run_script
from newllm.tuning import apply_trial, job_trial

CHECKPOINT_EVERY = 1  # evaluations; a killed job resumes from the last checkpoint
DONE_KEYS = ("dev_ppl", "best_step", "stopped_by", "test_ppl")
EVAL_LINE = "step %d: train PPL %.1f, dev PPL %.1f, dev acc %.2f %%"


def load_split(smk, split, device, context_dim):
    """A token stream and its context cache (``None`` when the rule has none), shapes checked."""
    stream = load_stream(getattr(smk.input, f"{split}_tokens"), device)
    path = getattr(smk.input, f"{split}_cache", None)
    if path is None:
        return Split(stream, None)
    cache = load_context_cache(path, device)
    if cache.shape[0] != stream.shape[0] or cache.shape[2] != context_dim:
        expected = f"({stream.shape[0]}, L, {context_dim})"
        raise ValueError(f"{split} context cache has shape {tuple(cache.shape)}, expected {expected}; rerun export_contexts")
    return Split(stream, cache)


def main(smk) -> None:
    params, name, log, device, token_input = start_run(smk)
    params = {**params, "phase2": apply_trial(params["phase2"], job_trial(smk))}  # a tuning trial's or the chosen settings
    context_block, token_block = build_model(params, token_input, device)
    cfg, precision = Phase2Config.from_dict(params["phase2"], device), run_precision(params, device, token_input.embed_dim)
    train, dev, test = (load_split(smk, split, device, params["run"]["context_dim"]) for split in ("train", "dev", "test"))
    sizes = f"{train.targets}/{dev.targets}/{test.targets} train/dev/test targets"
    log.info("Phase 2 %s on %s (%s): %s, %s", name, device, precision, sizes, cfg)
    checkpoint = run_checkpoint(smk, smk.output.weights, every=CHECKPOINT_EVERY)
    bar = tqdm(
        total=cfg.max_steps * cfg.batch_size, desc=name, unit="tok", unit_scale=True, file=progress_stream(log), mininterval=10
    )
    with bar:
        result = train_phase2(
            token_block,
            token_input,
            train,
            dev,
            cfg,
            seed=params["seed"],
            run_name=name,
            on_batch=bar.update,
            on_eval=lambda r: log.info(EVAL_LINE, r["step"], r["train_ppl"], r["dev_ppl"], 100 * r["dev_accuracy"]),
            checkpoint=checkpoint,
            on_oom=lambda micro: log.warning(
                "out of memory: micro-batches of %d tokens from now on (same optimizer step)", micro
            ),
            precision=precision,
        )
    scored = hasattr(smk.output, "test_token_nll")  # a tuning trial is never scored on test
    test_eval = evaluate(token_block, token_input, test, cfg, return_token_nll=True, precision=precision) if scored else None
    phase1_path = getattr(smk.input, "phase1_metrics", None)  # a trained ContextBlock's Phase 1 cost, when the rule passes it
    phase1 = read_json(phase1_path)["summary"] if phase1_path else None
    context_params = 0 if train.cache is None else read_json(smk.input.cache_meta)["context_parameters"]
    summary = final_summary(result.summary, test_eval, token_block, token_input, context_params, phase1, train.stream.shape[0])
    if summary["undertrained"]:
        log.warning("Phase 2 %s reached max_steps=%d before dev loss stopped improving: undertrained", name, cfg.max_steps)
    save_weights(smk.output.weights, token_block.state_dict(), {"run": name, "best_step": str(summary["best_step"])})
    if scored:
        write_npy(smk.output.test_token_nll, test_eval["token_nll"])
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, result.history, device)
    checkpoint.path.unlink(missing_ok=True)
    log.info("Phase 2 done: dev PPL %.2f (step %d, %s), test PPL %s", *(summary.get(k, "not scored") for k in DONE_KEYS))


if __name__ == "__main__":
    run_script(main, globals())
