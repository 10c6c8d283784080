"""Rule baseline_lm: a neural LM baseline, parameter-matched to the cvfp run (docs/method.md §10).

Same training tokens, dev stream (early stopping) and test stream (reporting) as every
other model, CVFP's frozen embeddings and tied head, and the training loop Phase 2 runs
(newllm.trainer).  Writes ``lm/metrics.json``, ``lm/test_token_nll.npy`` (float32
``[n_test - 1]``, nats) and ``lm/history.csv``.
"""

import time

import torch

from newllm.baselines.factory import SIZE_NAME, STATEFUL, build_baseline
from newllm.baselines.models import SEQ_LEN_KEY, cvfp_parameter_target
from newllm.baselines.training import NeuralTrainConfig, evaluate_stream, final_summary, train_neural_lm
from newllm.io import write_npy
from newllm.pipeline import run_checkpoint, run_precision, start_lm_run, write_run_outputs
from newllm.script import run_script
from newllm.tuning import apply_trial, job_trial

CHECKPOINT_EVERY = 1  # dev evaluations; a killed job resumes from the last checkpoint
EVAL_LINE = "step %d (%d tokens): train loss %.3f, dev PPL %.2f, dev acc %.2f %%"
DONE_KEYS = ("stopped_by", "steps", "best_step", "dev_ppl", "test_ppl", "train_seconds")


def main(smk) -> None:
    name, baselines = smk.params.run["run"]["model"], smk.params.baselines
    baselines = {**baselines, name: apply_trial(baselines[name], job_trial(smk))}  # a tuning trial's or the chosen settings
    if name not in SEQ_LEN_KEY:
        raise ValueError(f"rule baseline_lm trains {sorted(SEQ_LEN_KEY)}, got model {name!r}")
    params, label, log, device, embeddings, (train, dev, test) = start_lm_run(smk, ("train", "dev", "test"))
    target = cvfp_parameter_target(params["model"], embeddings.shape[1])
    torch.manual_seed(params["seed"])
    model, size = build_baseline(name, embeddings, baselines[name], target, baselines["parameter_tolerance"])
    model.to(device)
    precision = run_precision(params, device, embeddings.shape[1])
    cfg = NeuralTrainConfig.for_model(name, baselines, device)
    match = f"size {size.size}: {size.parameters} trainable parameters ({100 * size.relative_gap:+.1f} % of cvfp's {target})"
    log.info("%s on %s (%s): %d train tokens, %s; %s", label, device, precision, train.shape[0], match, cfg)
    checkpoint = run_checkpoint(smk, smk.output.metrics, every=CHECKPOINT_EVERY)
    trained = train_neural_lm(
        model,
        train,
        dev,
        cfg,
        seed=params["seed"],
        stateful=name in STATEFUL,
        run_name=label,
        on_eval=lambda r: log.info(EVAL_LINE, r["step"], r["tokens"], r["train_loss"], r["dev_ppl"], 100 * r["dev_accuracy"]),
        precision=precision,
        checkpoint=checkpoint,
    )
    t0, scored = time.perf_counter(), hasattr(smk.output, "test_nll")  # a tuning trial is never scored on test
    test_eval = evaluate_stream(model, test, cfg.chunk_tokens, precision) if scored else None
    summary = final_summary(trained.summary, test_eval, time.perf_counter() - t0, model, size, SIZE_NAME[name])
    if scored:
        write_npy(smk.output.test_nll, test_eval["token_nll"])
    baseline = {
        "model": name,
        "settings": baselines[name],
        "early_stopping": baselines["early_stopping"],
        "chunk_tokens": cfg.chunk_tokens,
    }
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, trained.history, device, baseline=baseline)
    checkpoint.path.unlink(missing_ok=True)
    log.info(
        "%s done: %s after %d steps (best %d); dev PPL %.2f, test PPL %s, %.1f s",
        label,
        *(summary.get(k, "not scored") for k in DONE_KEYS),
    )


if __name__ == "__main__":
    run_script(main, globals())
