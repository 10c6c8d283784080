"""Rule tuning_choice: a tuned model's trials, the one with the lowest dev loss kept (docs/method.md §10.5).

Writes ``tuning/{model}/choice.json``: the tuning run, every trial's row
(:func:`newllm.tuning.trial_row`) and the chosen one; every run of the family trains with
it (:func:`newllm.tuning.job_trial`).
"""

from newllm.io import read_json, write_json
from newllm.runtime import get_logger
from newllm.script import run_script
from newllm.tuning import Trial, choose, trial_row


def main(smk) -> None:
    log = get_logger(smk.log[0])
    model = smk.wildcards.model
    rows = [trial_row(model, Trial.parse(name), read_json(path)) for name, path in zip(smk.params.trials, smk.input.metrics)]
    chosen = choose(rows)
    write_json(smk.output[0], {"model": model, "tuning_run": smk.params.tuning_run, "chosen": chosen, "trials": rows})
    for row in rows:
        log.info(
            "%s %s: dev loss %.4f nats (PPL %.2f), best step %s of %s",
            model,
            row["trial"],
            row["dev_loss"],
            row["dev_ppl"],
            row["best_step"],
            row["steps"],
        )
    log.info("%s: chose %s (learning rate %g, dropout %g)", model, chosen["trial"], chosen["learning_rate"], chosen["dropout"])


if __name__ == "__main__":
    run_script(main, globals())
