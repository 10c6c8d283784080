"""Rule phase2: TokenBlock training on cached contexts with the tied frozen head (SPEC §7).

Selects on dev (early stopping, best step), reports on test.  The ``no_context`` control
trains the same TokenBlock with the context input fixed to zero (no cache).
"""

from tqdm import tqdm

from newllm.io import write_npy
from newllm.model import count_parameters
from newllm.phase2 import Phase2Config, Split, evaluate, train_phase2
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

CHECKPOINT_EVERY = 1  # evaluations; a killed job resumes from the last checkpoint


def load_split(smk, split, device, run):
    """A token stream and its context cache (``None`` for no_context), shapes checked."""
    stream = load_stream(smk.input[f"{split}_tokens"], device)
    if run["model"] == "no_context":
        return Split(stream, None)
    cache = load_context_cache(smk.input[f"{split}_cache"], device)
    if cache.shape[0] != stream.shape[0] or cache.shape[2] != run["context_dim"]:
        raise ValueError(
            f"{split} context cache has shape {tuple(cache.shape)}, expected "
            f"({stream.shape[0]}, L, {run['context_dim']}); rerun export_contexts"
        )
    return Split(stream, cache)


def main(smk) -> None:
    params, name, log, device, token_input = start_run(smk)
    run = params["run"]
    context_block, token_block = build_model(params, token_input, device)
    cfg = Phase2Config.from_dict(params["phase2"], device)
    precision = run_precision(params, device, token_input.embed_dim)
    train, dev, test = (load_split(smk, split, device, run) for split in ("train", "dev", "test"))
    log.info(
        "Phase 2 %s on %s (%s): %d train / %d dev / %d test tokens, TokenBlock %d parameters, %s",
        name,
        device,
        precision,
        train.targets,
        dev.targets,
        test.targets,
        count_parameters(token_block),
        cfg,
    )
    checkpoint = run_checkpoint(smk, smk.output.weights, every=CHECKPOINT_EVERY)
    with tqdm(
        total=cfg.max_steps * cfg.batch_size,
        desc=f"phase2 {name}",
        unit="tok",
        unit_scale=True,
        file=progress_stream(log),
        mininterval=10,
    ) as bar:

        def on_eval(r):
            log.info(
                "step %d (epoch %d): train PPL %.1f, dev PPL %.1f, dev acc %.2f %%, %.0f tok/s",
                r["step"],
                r["epoch"],
                r["train_ppl"],
                r["dev_ppl"],
                100 * r["dev_accuracy"],
                r["tokens_per_s"],
            )

        result = train_phase2(
            token_block,
            token_input,
            train,
            dev,
            cfg,
            seed=params["seed"],
            run_name=name,
            on_batch=bar.update,
            on_eval=on_eval,
            checkpoint=checkpoint,
            on_oom=lambda micro: log.warning(
                "out of memory: retrying with micro-batches of %d tokens (gradient accumulation, same optimizer step)", micro
            ),
            precision=precision,
        )
    test_eval = evaluate(token_block, token_input, test, cfg, return_token_nll=True, precision=precision)
    context_params = 0 if run["model"] == "no_context" else count_parameters(context_block)
    parameters = context_params + count_parameters(token_block)
    vocab, embed_dim = token_input.weight.shape
    summary = {
        **result.summary,
        "test_loss": test_eval["loss"],
        "test_ppl": test_eval["ppl"],
        "test_accuracy": test_eval["accuracy"],
        "test_tokens": test_eval["tokens"],
        "context_block_parameters": context_params,
        "token_block_parameters": count_parameters(token_block),
        "parameters": parameters,
        # 6·N·D for the trained TokenBlock plus the tied head's two matmuls (fwd logits and
        # ∂L/∂h; E is frozen): 4·V·d_e per token; the ContextBlock is not trained here
        "train_flops": float(result.summary["tokens_processed"] * (6 * count_parameters(token_block) + 4 * vocab * embed_dim)),
        "selection": "best dev step; test scored once with the selected weights",
    }
    if summary["undertrained"]:
        log.warning(
            "Phase 2 %s reached max_steps=%d before dev loss stopped improving: flagged undertrained", name, cfg.max_steps
        )
    save_weights(smk.output.weights, token_block.state_dict(), {"run": name, "best_step": str(summary["best_step"])})
    write_npy(smk.output.test_token_nll, test_eval["token_nll"])
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, result.history, device)
    checkpoint.path.unlink(missing_ok=True)
    log.info(
        "Phase 2 done: dev PPL %.2f (step %d, %s), test PPL %.2f, test acc %.2f %%",
        summary["dev_ppl"],
        summary["best_step"],
        summary["stopped_by"],
        summary["test_ppl"],
        100 * summary["test_accuracy"],
    )


if __name__ == "__main__":
    run_script(main, globals())
