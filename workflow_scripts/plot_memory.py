"""Rule plot_memory: the perturbation probe beside usable memory, from the tables alone."""

import pandas as pd

from newllm.plots import plot_memory
from newllm.script import run_script


def main(smk) -> None:
    plot_memory(pd.read_csv(smk.input.curves), pd.read_csv(smk.input.usable), smk.output.figure)


if __name__ == "__main__":
    run_script(main, globals())
