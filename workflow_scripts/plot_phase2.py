"""Rule plot_phase2: learning curves of every trained model (an overview and one figure
per run), from the history table alone."""

import pandas as pd

from newllm.plots import RUN_KEYS, plot_training_curves
from newllm.script import run_script


def main(smk) -> None:
    try:
        history = pd.read_csv(smk.input.history)
    except pd.errors.EmptyDataError:  # a study without such runs
        history = pd.DataFrame(columns=RUN_KEYS)
    plot_training_curves(history, smk.output.overview, smk.output.runs)


if __name__ == "__main__":
    run_script(main, globals())
