"""Rule prediction: do Phase 1 metrics predict Phase 2 validation PPL? (SPEC §8)"""

import math

import pandas as pd

from newllm.analysis import prediction_analysis
from newllm.io import write_csv, write_json
from newllm.runtime import get_logger

log = get_logger(snakemake.log[0])
result = prediction_analysis(pd.read_csv(snakemake.input.runs))
write_csv(snakemake.output.correlations, pd.DataFrame(result["correlations"]))


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # undefined (constant column or too few runs): null, never a fake number
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


write_json(snakemake.output.models, _json_safe(result))
log.info("%s", result)
