"""Rule bootstrap_test: the hierarchical bootstrap of the study's test losses (docs/method.md §11).

Each replicate draws the training seeds with replacement (one draw shared by every point)
and then the test conversations with replacement (one draw shared by every run and the
head's LM); a point's replicate loss is the mean over its drawn seeds of the
token-weighted test loss on the drawn conversations (:mod:`newllm.uncertainty`).

Writes, under ``results/{study}/bootstrap/``: ``points.csv`` (seed-mean points, their PPL
intervals and ``gain_over_head``), ``point_losses.npy`` (``[B, P]`` replicate losses in
nats per target token, column p = row p of points.csv), ``head_losses.npy`` (``[B]``, empty
without a head LM), ``run_intervals.csv``, ``bootstrap.json`` and ``paired_gains.csv``.
"""

import numpy as np
import pandas as pd

from newllm.io import read_json, write_csv, write_json, write_npy
from newllm.paired_gains import bootstrap_study
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    runs = pd.read_csv(smk.input.runs)
    sample_end = read_json(smk.input.test_meta)["sample_end"]
    nll = {p: np.load(p, mmap_mode="r") for p in smk.input.nll}  # reduced to per-conversation sums one run at a time
    head_nll = np.load(smk.input.head_nll)  # the frozen head's own LM; empty when the embeddings have none
    result = bootstrap_study(
        runs, nll, sample_end, smk.params.resamples, smk.params.seed, smk.params.resample_seeds, head_nll=head_nll
    )
    write_csv(smk.output.points, result.points)
    write_npy(smk.output.point_losses, result.point_losses)
    write_npy(smk.output.head_losses, result.head_losses)
    write_csv(smk.output.runs, result.run_intervals)
    write_json(smk.output.info, result.info)
    write_csv(smk.output.paired_gains, result.paired_gains)
    info = result.info
    log.info(
        "%d resamples (seeds resampled: %s) of %d test conversations (%d targets) for %d runs -> %d points in %.2f s",
        info["resamples"],
        info["resample_seeds"],
        info["conversations"],
        info["targets"],
        info["runs"],
        info["points"],
        info["seconds"],
    )


if __name__ == "__main__":
    run_script(main, globals())
