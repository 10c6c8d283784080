"""DAG-scale benchmark: how long a dry run of a large sweep takes (target: < 30 s for ≥ 5,000 jobs).

Builds a study config with many sample sizes × context_dims × variants from the default
config, dry-runs it (optionally through a profile, e.g. the SLURM one) and prints the
number of jobs and the wall time.  Prints figures; asserts nothing.

    python benchmarks/dag_scale.py                          # ~5,000 jobs, local
    python benchmarks/dag_scale.py --profile profiles/slurm --dims 40
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def sweep_config(sizes: int, dims: int, variants: int) -> dict:
    """The default config with ``sizes`` × ``dims`` × ``variants`` runs."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["study"] = "dag_scale"
    cfg["sample_sizes"] = [25 * (k + 1) for k in range(sizes)]
    cfg["context_dims"] = [16 * (k + 1) for k in range(dims)]
    cfg["variants"] = {
        f"w{k}": {"phase1": {"dist_reg_weight": round(0.5 + 0.4 * k / max(variants - 1, 1), 3)}} for k in range(variants)
    }
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, default=10)
    parser.add_argument("--dims", type=int, default=25)
    parser.add_argument("--variants", type=int, default=5)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sweep.yaml"
        config.write_text(yaml.safe_dump(sweep_config(args.sizes, args.dims, args.variants)))
        cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", str(config), "--directory", tmp]
        if args.profile:
            cmd += ["--profile", args.profile]
        t0 = time.perf_counter()
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:])
        raise SystemExit(f"dry run failed (exit {result.returncode})")
    total = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.MULTILINE)
    jobs = int(total.group(1)) if total else -1
    runs = args.sizes * args.dims * args.variants
    print(f"dry run of {runs} runs ({jobs} jobs){' via ' + args.profile if args.profile else ''}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
