"""Rule state_producer: the LSTM language model whose hidden states lstm_states caches
(hidden size = context_dim, its own readout, trained with back-propagation through time on
the run's training tokens, then frozen; docs/method.md §10)."""

import torch

from newllm.baselines.models import LSTMLM
from newllm.baselines.training import NeuralTrainConfig, train_neural_lm
from newllm.pipeline import run_checkpoint, run_precision, start_lm_run, write_run_outputs
from newllm.runtime import save_weights
from newllm.script import run_script


def main(smk) -> None:
    params, label, log, device, embeddings, (train, dev) = start_lm_run(smk, ("train", "dev"))
    baselines = smk.params.baselines
    torch.manual_seed(params["seed"])
    model = LSTMLM(embeddings, params["run"]["context_dim"], baselines["lstm"]["dropout"]).to(device)
    cfg = NeuralTrainConfig.for_model("lstm", baselines, device)
    checkpoint = run_checkpoint(smk, smk.output.weights, every=1)
    log.info("%s: LSTM state producer, hidden %d, %d train tokens; %s", label, model.hidden_size, train.shape[0], cfg)
    trained = train_neural_lm(
        model,
        train,
        dev,
        cfg,
        seed=params["seed"],
        stateful=True,
        run_name=label,
        on_eval=lambda r: log.info("step %d: dev PPL %.2f", r["step"], r["dev_ppl"]),
        precision=run_precision(params, device, embeddings.shape[1]),
        checkpoint=checkpoint,
    )
    lstm_parameters = sum(p.numel() for p in model.lstm.parameters())
    summary = {**trained.summary, "hidden_size": model.hidden_size, "lstm_parameters": lstm_parameters}
    save_weights(smk.output.weights, model.state_dict(), {"run": label, "best_step": str(summary["best_step"])})
    write_run_outputs(smk.output.metrics, smk.output.history, params, summary, trained.history, device)
    checkpoint.path.unlink(missing_ok=True)
    log.info("%s done: dev PPL %.2f after %d steps", label, summary["dev_ppl"], summary["steps"])


if __name__ == "__main__":
    run_script(main, globals())
