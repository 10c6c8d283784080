"""Mutation testing of the numerical core: kill rate per module and the survivors.

Runs mutmut (``pip install -e ".[mutation]" -c constraints.txt``; configured in
``[tool.mutmut]`` of pyproject.toml) one module at a time, against the fast unit tests
only (never the workflow, SLURM or resume tests), one test process at a time, each module
bounded by ``--minutes``.  mutmut keeps its results in ``mutants/``, so a module cut short
continues where it stopped on the next call; survivors are always re-checked (the tests
may have changed since), killed mutants are not unless ``--fresh``.

Then prints, per module, the mutants and how many the tests killed, and the kill rate of
the non-equivalent ones; equivalent mutants (no input can tell them from the original)
are listed with the reason in ``tests/mutation_equivalents.md`` and left out of the rate.

    python benchmarks/mutation.py                              # every core module, 10 min each
    python benchmarks/mutation.py --modules metrics losses     # some modules
    python benchmarks/mutation.py --report                     # print the last results, run nothing
    python benchmarks/mutation.py --markdown                   # the same as a Markdown table
    python -m mutmut show newllm.metrics.x_effective_rank__mutmut_8   # one mutant's diff

Not part of ``.ci/run``: a full pass takes hours of CPU on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENTS = REPO / "tests" / "mutation_equivalents.md"
MODULES = (
    "metrics",
    "losses",
    "training",
    "scaling",
    "uncertainty",
    "analysis",
    "solvers",
    "phase1",
    "phase2",
    "data",
    "diagnostics",
    "repetition",
    "baselines/ngram",
    "baselines/models",
)
# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), folded into what we report
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout"}
STATUS.update({-24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not run"})


def status(exit_code: int | None) -> str:
    return STATUS.get(exit_code, "killed" if exit_code is not None and exit_code < 0 else "suspicious")


def equivalent_mutants(path: Path = EQUIVALENTS) -> dict[str, str]:
    """``- `newllm.x.y__mutmut_3`: reason`` lines of the equivalents file, name -> reason."""
    if not path.is_file():
        return {}
    found = re.findall(r"^\s*[-*]\s+`([^`]+__mutmut_\d+)`\s*:?\s*(.*)$", path.read_text(), flags=re.M)
    return dict(found)


def meta_path(module: str) -> Path:
    return REPO / "mutants" / "newllm" / f"{module}.py.meta"


def load_results(module: str) -> dict[str, int | None]:
    path = meta_path(module)
    return json.loads(path.read_text())["exit_code_by_key"] if path.is_file() else {}


def reset(module: str, which: set[str]) -> int:
    """Mark the module's mutants in the classes ``which`` as not run, so mutmut checks them again."""
    path = meta_path(module)
    if not path.is_file():
        return 0
    meta = json.loads(path.read_text())
    keys = [k for k, code in meta["exit_code_by_key"].items() if status(code) in which]
    for key in keys:
        meta["exit_code_by_key"][key] = None
    path.write_text(json.dumps(meta, indent=4))
    return len(keys)


def run_module(module: str, minutes: float, fresh: bool) -> str:
    reset(module, {"killed", "timeout", "suspicious", "survived"} if fresh else {"survived", "suspicious"})
    pattern = "newllm." + module.replace("/", ".") + ".*"
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", pattern]
    log = REPO / "mutants" / f"run-{module.replace('/', '.')}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=minutes * 60)
            return "done" if proc.returncode == 0 else f"mutmut exit {proc.returncode}, see {log.relative_to(REPO)}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # mutmut and the test process it forked
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return f"stopped after {minutes:g} min (rerun to continue)"


def markdown(modules: list[str]) -> None:
    """The per-module table as Markdown (for the README's "last result")."""
    equivalents = equivalent_mutants()
    print("| module | mutants | equivalent | killed | surviving | not run | kill rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module in modules:
        results = load_results(module)
        counts = Counter(status(code) for name, code in results.items() if name not in equivalents)
        killed = counts["killed"] + counts["timeout"]
        surviving = counts["survived"] + counts["no tests"] + counts["suspicious"]
        rate = f"{100 * killed / (killed + surviving):.1f} %" if killed + surviving else "–"
        n_equiv = sum(name in equivalents for name in results)
        print(f"| {module} | {len(results)} | {n_equiv} | {killed} | {surviving} | {counts['not run']} | {rate} |")


def report(modules: list[str], notes: dict[str, str], show: int) -> None:
    equivalents = equivalent_mutants()
    header = (
        f"{'module':18} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'timeout':>7} {'not run':>7} {'equiv':>5}"
    )
    print(header + f" {'kill rate':>9}  note")
    survivors: dict[str, list[str]] = {}
    for module in modules:
        results = load_results(module)
        counts = Counter(status(code) for name, code in results.items() if name not in equivalents)
        n_equiv = sum(name in equivalents for name in results)
        killed = counts["killed"] + counts["timeout"]
        decided = killed + counts["survived"] + counts["no tests"] + counts["suspicious"]
        rate = f"{100 * killed / decided:8.1f}%" if decided else f"{'-':>9}"
        print(
            f"{module:18} {len(results):7d} {counts['killed']:7d} {counts['survived']:8d} {counts['no tests']:8d}"
            f" {counts['timeout']:7d} {counts['not run']:7d} {n_equiv:5d} {rate}  {notes.get(module, '')}"
        )
        survivors[module] = sorted(
            (n for n, c in results.items() if status(c) in {"survived", "no tests", "suspicious"} and n not in equivalents),
            key=lambda n: (n.rsplit("__mutmut_", 1)[0], int(n.rsplit("_", 1)[1])),
        )
    known = {name for module in modules for name in load_results(module)}
    stale = sorted(
        n for n in equivalents if n not in known and any(n.startswith(f"newllm.{m.replace('/', '.')}.") for m in modules)
    )
    if stale:
        print(f"\n{len(stale)} listed equivalent mutants are no longer generated (the source changed): re-check {stale[:5]}")
    print("\nkill rate = (killed + timeout) / (mutants checked - equivalent); 'no tests' counts as surviving.")
    print(f"Equivalent mutants and why: {EQUIVALENTS.relative_to(REPO)}.  A mutant's diff: python -m mutmut show NAME")
    for module, names in survivors.items():
        if names:
            print(f"\nsurviving in {module} ({len(names)}):")
            for name in names[:show] if show >= 0 else names:
                print(f"  {name}  [{status(load_results(module)[name])}]")
            if 0 <= show < len(names):
                print(f"  ... {len(names) - show} more (--show -1 lists all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="+", default=list(MODULES), help="newllm modules (default: the numerical core)")
    parser.add_argument("--minutes", type=float, default=10.0, help="time limit per module (default 10)")
    parser.add_argument("--fresh", action="store_true", help="re-check every mutant, not only the survivors")
    parser.add_argument("--clean", action="store_true", help="delete mutants/ first (after a change to newllm/ or the config)")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument("--show", type=int, default=50, help="survivors listed per module (-1: all)")
    parser.add_argument("--markdown", action="store_true", help="print the last results as a Markdown table, run nothing")
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"not a core module: {unknown}; choose from {list(MODULES)}")
    if args.markdown:
        return markdown(args.modules)
    notes: dict[str, str] = {}
    if not args.report:
        if args.clean:
            shutil.rmtree(REPO / "mutants", ignore_errors=True)
        for module in args.modules:
            start = time.monotonic()
            note = run_module(module, args.minutes, args.fresh)
            notes[module] = f"{note}, {time.monotonic() - start:.0f} s"
            print(f"{module}: {notes[module]}", flush=True)
    report(args.modules, notes, args.show)


if __name__ == "__main__":
    main()
