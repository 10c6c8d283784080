"""Rule collect_runs: one tidy row per run of every model, the Phase 1 diagnostics table,
and the Phase 1 and training history tables (each row tagged with its run)."""

import pandas as pd

from newllm.analysis import run_rows, tag_history
from newllm.io import read_json, write_csv
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    inputs = smk.input
    runs, diagnostics = run_rows(
        {p: read_json(p) for p in inputs.metrics},
        phase1={p: read_json(p) for p in inputs.phase1},
        caches={p: read_json(p) for p in inputs.cache},
        diagnostics={p: read_json(p) for p in inputs.diagnostics},
    )
    phase1 = (
        pd.concat([tag_history(pd.read_csv(p), p) for p in inputs.phase1_history], ignore_index=True)
        if inputs.phase1_history
        else pd.DataFrame()
    )
    if len(phase1) and "effective_rank" in phase1:
        phase1["effective_rank_pct"] = 100.0 * phase1["effective_rank"] / phase1["context_dim"]
    training = (
        pd.concat([tag_history(pd.read_csv(p), p) for p in inputs.history], ignore_index=True)
        if inputs.history
        else pd.DataFrame()
    )
    write_csv(smk.output.runs, runs)
    write_csv(smk.output.diagnostics, diagnostics)
    write_csv(smk.output.phase1_history, phase1)
    write_csv(smk.output.training_history, training)
    log.info("collected %d runs (%s)", len(runs), runs["model"].value_counts().to_dict())


if __name__ == "__main__":
    run_script(main, globals())
