"""Rule plot_phase1: Phase 1 curves (an overview and one figure per run), from the history table alone."""

import pandas as pd

from newllm.plots import RUN_KEYS, plot_phase1_curves
from newllm.script import run_script


def main(smk) -> None:
    try:
        history = pd.read_csv(smk.input.history)
    except pd.errors.EmptyDataError:  # a study without such runs
        history = pd.DataFrame(columns=RUN_KEYS)
    plot_phase1_curves(history, smk.output.overview, smk.output.runs)


if __name__ == "__main__":
    run_script(main, globals())
