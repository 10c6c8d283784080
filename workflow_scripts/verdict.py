"""Rule verdict: the report's opening lines, generated from the tables (never by hand)."""

import math

import numpy as np
import pandas as pd

from newllm.analysis import verdict, verdict_html, verdict_markdown
from newllm.io import atomic_path, read_json, write_json
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    info = read_json(smk.input.info)
    result = verdict(
        pd.read_csv(smk.input.points),
        np.load(smk.input.point_losses),
        pd.read_csv(smk.input.fits),
        pd.read_csv(smk.input.runs),
        smk.params.reference_variant,
        test_set={k: info[k] for k in ("conversations", "targets")},
        resamples=info["resamples"],
        head_reference=read_json(smk.input.embeddings_meta),
        head_boot=np.load(smk.input.head_losses),
    )
    text = verdict_markdown(result)
    for path, content in ((smk.output.markdown, text), (smk.output.html, verdict_html(text))):
        with atomic_path(path) as tmp:
            tmp.write_text(content)
    write_json(smk.output.json, _finite(result))
    log.info("\n%s", text)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    run_script(main, globals())
