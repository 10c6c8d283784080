"""Rule plot_phase1: Phase 1 curves (an overview and one figure per run), from the history table alone."""

from newllm.plots import plot_phase1_curves, read_history
from newllm.script import run_script


def main(smk) -> None:
    plot_phase1_curves(read_history(smk.input.history), smk.output.overview, smk.output.runs)


if __name__ == "__main__":
    run_script(main, globals())
