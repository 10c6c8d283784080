"""Rule phase1: CVFP training of the ContextBlock for one run (docs/method.md §4).

For the ``untrained_context`` control the ContextBlock is saved at its initialisation
(the same init a cvfp run of the same seed starts from) and only measured.
"""

from tqdm import tqdm

from newllm.model import count_parameters
from newllm.phase1 import Phase1Config, train_phase1, untrained_summary
from newllm.pipeline import build_model, load_stream, run_checkpoint, run_precision, start_run, write_run_outputs
from newllm.runtime import progress_stream, save_weights
from newllm.script import run_script

CHECKPOINT_EVERY = 5  # iterations; a killed job resumes from the last checkpoint
ITERATION_LINE = "iteration %d: cvfp %.5f, diversity %.5f, convergence train %s / dev %s, %.0f tok/s"
ITERATION_KEYS = ("iteration", "cvfp_loss", "diversity_loss", "convergence", "val_convergence", "tokens_per_s")


def train(smk, name, log, block, token_input, stream, dev_stream, cfg, precision, seed):
    """Phase 1 with a checkpoint every :data:`CHECKPOINT_EVERY` iterations and a log line per
    iteration; ``(summary, history)``."""
    checkpoint = run_checkpoint(smk, smk.output.weights, every=CHECKPOINT_EVERY)
    with tqdm(total=cfg.max_iterations, desc=f"phase1 {name}", unit="it", file=progress_stream(log), mininterval=10) as bar:

        def report(r):
            bar.update(1)
            log.info(ITERATION_LINE, *(r.get(key) for key in ITERATION_KEYS))

        result = train_phase1(
            block,
            token_input,
            stream,
            cfg,
            val_stream=dev_stream,
            seed=seed,
            run_name=name,
            on_iteration=report,
            checkpoint=checkpoint,
            precision=precision,
        )
    checkpoint.path.unlink(missing_ok=True)
    if result.summary["undertrained"]:
        line = "Phase 1 %s stopped at max_iterations=%d without meeting its stop rule (%s): flagged undertrained"
        log.warning(line, name, cfg.max_iterations, cfg.stop_rule)
    return result.summary, result.history


def main(smk) -> None:
    params, name, log, device, token_input = start_run(smk)
    stream, dev_stream = (load_stream(path, device) for path in (smk.input.train, smk.input.dev))
    context_block, _ = build_model(params, token_input, device)
    cfg, precision = Phase1Config.from_dict(params["phase1"]), run_precision(params, device, token_input.embed_dim)
    parameters = count_parameters(context_block)
    line = "Phase 1 %s on %s (%s): %d tokens, ContextBlock %d parameters, %s"
    log.info(line, name, device, precision, stream.shape[0], parameters, cfg)
    if params["run"]["model"] == "untrained_context":  # measured only, by fp32 sweeps
        summary = untrained_summary(context_block, token_input, stream, dev_stream, cfg, params["seed"])
        summary, history = {**summary, "precision": "fp32"}, []
    else:
        summary, history = train(smk, name, log, context_block, token_input, stream, dev_stream, cfg, precision, params["seed"])
    summary.update(train_tokens=int(stream.shape[0]), context_block_parameters=parameters)
    save_weights(smk.output.weights, context_block.state_dict(), {"run": name})
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, history, device)
    log.info("Phase 1 done: %s", summary)


if __name__ == "__main__":
    run_script(main, globals())
