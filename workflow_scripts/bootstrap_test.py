"""Rule bootstrap_test: resample test conversations (the same resamples for every run),
recompute every run's test loss, average seeds per scaling point (issue 9)."""

import numpy as np
import pandas as pd

from newllm.io import read_json, write_csv, write_json, write_npy
from newllm.runtime import get_logger
from newllm.script import run_script
from newllm.uncertainty import bootstrap_study, reference_losses


def main(smk) -> None:
    log = get_logger(smk.log[0])
    runs = pd.read_csv(smk.input.runs)
    sample_end = read_json(smk.input.test_meta)["sample_end"]
    nll = {p: np.load(p, mmap_mode="r") for p in smk.input.nll}  # reduced to per-conversation sums one run at a time
    points, point_boot, intervals, info = bootstrap_study(
        runs, nll, sample_end, smk.params.resamples, smk.params.seed, smk.params.resample_seeds
    )
    head_nll = np.load(smk.input.head_nll)  # the frozen head's own LM; empty when the embeddings have none
    head_boot = np.empty(0)
    if head_nll.size:
        info["head_loss"], head_boot = reference_losses(head_nll, sample_end, smk.params.resamples, smk.params.seed)
    write_npy(smk.output.head_losses, head_boot)
    write_csv(smk.output.points, points)
    write_npy(smk.output.point_losses, point_boot)
    write_csv(smk.output.runs, intervals)
    write_json(smk.output.info, info)
    log.info(
        "%d resamples of %d test conversations (%d targets) for %d runs -> %d points in %.2f s",
        info["resamples"],
        info["conversations"],
        info["targets"],
        info["runs"],
        info["points"],
        info["seconds"],
    )


if __name__ == "__main__":
    run_script(main, globals())
