"""Rule-script entry point: run ``main(snakemake)`` and put any uncaught error in the rule's log.

Snakemake shows a failed job's ``log:`` (``--show-failed-logs``, SLURM's job logs), so a
traceback that only reached stderr would leave the log without the error (pypsa-eur's
``configure_logging`` does the same).  Every workflow script ends with::

    if __name__ == "__main__":
        run_script(main, globals())

``main(smk)`` takes any object with Snakemake's ``input``/``output``/``params``/``log``/
``wildcards``/``threads`` attributes, so it can be called from a Python session for
debugging (e.g. with a ``types.SimpleNamespace``).

Two kinds of failure:

* an *expected* error — one the package raises on purpose with a message that says what
  is wrong and what to do (:func:`is_expected`: ``DataError``, ``ConfigError``,
  ``ProvenanceError``, ``TokenizerError``, ``HubError``, ``TrainingDivergedError``, ...)
  — is printed to stderr as one line, ``error: <message>``, and the job exits with
  status 1; its traceback goes to the log only;
* any other error (a bug, a library failure) keeps its full traceback on stderr as well
  as in the log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

PACKAGE = "newllm"
EXIT_EXPECTED = 1
"""Exit status of a job stopped by an expected error."""


def is_expected(error: BaseException) -> bool:
    """Whether ``error`` is one the package raises on purpose: an ``Exception`` whose
    class, or a base class of it, is defined in the ``newllm`` package.

    Decided by the classes' modules, so this module imports none of them (every rule's
    code hash covers what its script imports, ``newllm.provenance``).
    """
    return isinstance(error, Exception) and any(
        cls.__module__ == PACKAGE or cls.__module__.startswith(PACKAGE + ".") for cls in type(error).__mro__
    )


def run_script(main: Callable[[Any], None], namespace: dict[str, Any]) -> None:
    """Call ``main(snakemake)`` when Snakemake runs the script; log any error.

    Does nothing when the script is run without Snakemake's injected ``snakemake`` object.

    Raises:
        SystemExit: status :data:`EXIT_EXPECTED` after an expected error (:func:`is_expected`),
            whose message went to stderr as ``error: <message>`` and traceback to the log.
        BaseException: any other error, re-raised after its traceback went to the log.
    """
    smk = namespace.get("snakemake")
    if smk is None:
        return
    from newllm.runtime import get_logger

    log_path = smk.log[0] if len(smk.log) else None
    get_logger(log_path)
    try:
        main(smk)
    except BaseException as error:
        # main() may have reopened the log through get_logger: log through whatever
        # handlers "newllm" has now, appending to the file
        logging.getLogger("newllm").exception("rule %s failed", getattr(smk, "rule", "?"))
        if not is_expected(error):
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_EXPECTED) from None
