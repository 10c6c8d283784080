"""Rule baseline_lm: an LSTM or Transformer LM, parameter-matched to the cvfp run (issue 9).

Same training tokens, dev stream (early stopping) and test stream (reporting) as every
other model, CVFP's frozen embeddings and tied head.  Writes ``lm/metrics.json``,
``lm/test_token_nll.npy`` (float32 ``[n_test - 1]``, nats) and ``lm/history.csv``.
"""

import time

import torch

from newllm.baselines.models import SEQ_LEN_KEY, build_baseline, cvfp_parameter_target, train_flops
from newllm.baselines.training import NeuralTrainConfig, evaluate_stream, train_neural_lm
from newllm.io import write_npy
from newllm.model import count_parameters
from newllm.pipeline import load_stream, run_checkpoint, run_precision, write_run_outputs
from newllm.runtime import get_logger, load_weights, resolve_device, seed_everything
from newllm.script import run_script

CHECKPOINT_EVERY = 1  # dev evaluations; a killed job resumes from the last checkpoint


def main(smk) -> None:
    params, baselines = smk.params.run, smk.params.baselines
    run = params["run"]
    name = run["model"]
    if name not in SEQ_LEN_KEY:
        raise ValueError(f"rule baseline_lm trains lstm or transformer, got model {name!r}")
    label = f"{name}/{run['variant']}/samples{run['samples']}/ctx{run['context_dim']}/seed{run['seed']}"
    log = get_logger(smk.log[0])
    seed_everything(params["seed"], smk.threads)
    device = resolve_device(params["device"])
    settings = baselines[name]

    embeddings = load_weights(smk.input.embeddings)["embeddings"].float().to(device)
    train, dev, test = (load_stream(path, device) for path in (smk.input.train, smk.input.dev, smk.input.test))
    target = cvfp_parameter_target(params["model"], embeddings.shape[1])
    torch.manual_seed(params["seed"])
    model, size = build_baseline(name, embeddings, settings, target, baselines["parameter_tolerance"])
    model.to(device)
    precision = run_precision(params, device, embeddings.shape[1])
    cfg = NeuralTrainConfig.from_dict(
        {
            **baselines["early_stopping"],
            **settings,
            "seq_len": settings[SEQ_LEN_KEY[name]],
            "chunk_tokens": baselines["chunk_tokens"],
        },
        device,
    )
    log.info(
        "%s on %s (%s): %d train / %d dev / %d test tokens; size %d -> %d trainable parameters (cvfp %d, %+.1f %%); %s",
        label,
        device,
        precision,
        train.shape[0],
        dev.shape[0],
        test.shape[0],
        size.size,
        count_parameters(model),
        target,
        100 * size.relative_gap,
        cfg,
    )

    checkpoint = run_checkpoint(smk, smk.output.metrics, every=CHECKPOINT_EVERY)
    trained = train_neural_lm(
        model,
        train,
        dev,
        cfg,
        seed=params["seed"],
        stateful=name == "lstm",
        run_name=label,
        on_eval=lambda r: log.info(
            "step %d (%d tokens): train loss %s, dev PPL %.2f, dev acc %.2f %%, %.0f s",
            r["step"],
            r["tokens"],
            "-" if r["train_loss"] is None else f"{r['train_loss']:.3f}",
            r["dev_ppl"],
            100 * r["dev_accuracy"],
            r["seconds"],
        ),
        precision=precision,
        checkpoint=checkpoint,
    )
    history, summary = trained.history, trained.summary
    t0 = time.perf_counter()
    result = evaluate_stream(model, test, cfg.chunk_tokens, precision)
    parameters = count_parameters(model)
    summary.update(
        train_tokens=train.shape[0] - 1,
        test_loss=result["loss"],
        test_ppl=result["ppl"],
        test_accuracy=result["accuracy"],
        test_tokens=result["tokens"],
        test_seconds=time.perf_counter() - t0,
        parameters=parameters,
        parameter_target=target,
        parameter_gap=parameters / target - 1.0,
        size_name="hidden_size" if name == "lstm" else "width",
        size=size.size,
        train_flops=train_flops(parameters, summary["tokens_processed"], embeddings.shape[1]),
        train_flops_formula="6 * parameters * tokens_processed + 6 * V * d_e * tokens_processed",
    )
    write_npy(smk.output.test_nll, result["token_nll"])
    baseline = {
        "model": name,
        "settings": settings,
        "early_stopping": baselines["early_stopping"],
        "chunk_tokens": cfg.chunk_tokens,
    }
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, history, device, baseline=baseline)
    checkpoint.path.unlink(missing_ok=True)
    log.info(
        "%s done: %s after %d steps (best %d); dev PPL %.2f, test PPL %.2f, test acc %.2f %%, %.1f s",
        label,
        summary["stopped_by"],
        summary["steps"],
        summary["best_step"],
        summary["dev_ppl"],
        summary["test_ppl"],
        100 * summary["test_accuracy"],
        summary["train_seconds"],
    )


if __name__ == "__main__":
    run_script(main, globals())
