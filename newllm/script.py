"""Rule-script entry point: run ``main(snakemake)`` and put any uncaught error in the rule's log.

Snakemake shows a failed job's ``log:`` (``--show-failed-logs``, SLURM's job logs), so a
traceback that only reached stderr would leave the log without the error (pypsa-eur's
``configure_logging`` does the same).  Every workflow script ends with::

    if __name__ == "__main__":
        run_script(main, globals())

``main(smk)`` takes any object with Snakemake's ``input``/``output``/``params``/``log``/
``wildcards``/``threads`` attributes, so it can be called from a Python session for
debugging (e.g. with a ``types.SimpleNamespace``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable


def run_script(main: Callable[[Any], None], namespace: dict[str, Any]) -> None:
    """Call ``main(snakemake)`` when Snakemake runs the script; log and re-raise any error.

    Does nothing when the script is run without Snakemake's injected ``snakemake`` object.
    """
    smk = namespace.get("snakemake")
    if smk is None:
        return
    from newllm.runtime import get_logger

    log_path = smk.log[0] if len(smk.log) else None
    get_logger(log_path)
    try:
        main(smk)
    except BaseException:
        # main() may have reopened the log through get_logger: log through whatever
        # handlers "newllm" has now, appending to the file
        logging.getLogger("newllm").exception("rule %s failed", getattr(smk, "rule", "?"))
        raise
