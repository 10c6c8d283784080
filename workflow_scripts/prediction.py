"""Rule prediction: do Phase 1 metrics of the cvfp runs predict their test PPL?
(docs/method.md §8; within size, across configurations, effective n, no independence p-values)"""

import math

import pandas as pd

from newllm.analysis import prediction_analysis
from newllm.io import write_csv, write_json
from newllm.runtime import get_logger
from newllm.script import run_script


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # undefined (constant column or too few runs): null, never a fake number
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def main(smk) -> None:
    log = get_logger(smk.log[0])
    runs = pd.read_csv(smk.input.runs)
    result = prediction_analysis(runs[runs["model"] == "cvfp"].reset_index(drop=True))
    write_csv(smk.output.correlations, pd.DataFrame(result["correlations"]))
    write_json(smk.output.models, _json_safe(result))
    log.info("%s", result)


if __name__ == "__main__":
    run_script(main, globals())
