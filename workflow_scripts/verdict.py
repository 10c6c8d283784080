"""Rule verdict: the report's opening lines, generated from the tables (never by hand)."""

import math

import numpy as np
import pandas as pd

from newllm.analysis import verdict, verdict_html, verdict_markdown
from newllm.analysis.findings import claims_markdown, findings, findings_markdown
from newllm.io import atomic_path, read_json, write_json
from newllm.runtime import get_logger
from newllm.script import run_script
from newllm.tuning import tuning_markdown


def main(smk) -> None:
    log = get_logger(smk.log[0])
    info = read_json(smk.input.info)
    points, point_losses, fits, runs = (
        pd.read_csv(smk.input.points),
        np.load(smk.input.point_losses),
        pd.read_csv(smk.input.fits),
        pd.read_csv(smk.input.runs),
    )
    tables = [pd.read_csv(smk.input[k]) for k in ("paired_gains", "prediction", "usable_memory")]
    opening = findings(
        tables[0], points, point_losses, fits, runs, tables[1], tables[2], smk.params.design, smk.params.reference_variant
    )
    result = verdict(
        points,
        point_losses,
        fits,
        runs,
        smk.params.reference_variant,
        test_set={k: info[k] for k in ("conversations", "targets")},
        resamples=info["resamples"],
        head_reference=read_json(smk.input.embeddings_meta),
        head_boot=np.load(smk.input.head_losses),
    )
    result["findings"] = opening
    path = getattr(smk.input, "tuning", None)  # none (an empty list) without tuning
    tuning = pd.read_csv(path).to_dict("records") if path else []
    text = _with_findings(verdict_markdown(result), opening, tuning_markdown(tuning))
    for path, content in ((smk.output.markdown, text), (smk.output.html, verdict_html(text))):
        with atomic_path(path) as tmp:
            tmp.write_text(content)
    write_json(smk.output.json, _finite(result))
    log.info("\n%s", text)


def _with_findings(text: str, opening: dict, tuning: list[str]) -> str:
    """The verdict with the history gain and the gain over the head after its title line,
    then the tuning section, and the claims table at the end."""
    title, _, rest = text.partition("\n")
    return "\n".join([title, "", findings_markdown(opening), rest.lstrip("\n"), *tuning, *claims_markdown(opening["claims"]), ""])


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
