"""The three ways to install agree: pyproject.toml's ranges, the conda
environment of ``snakemake --sdm conda`` (envs/newllm.yaml) and the tested pins in
constraints.txt."""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

CONDA_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib", "huggingface_hub": "huggingface-hub"}
"""conda-forge package name -> PyPI name, where they differ."""


def _pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower(): Requirement(r).specifier for r in project["dependencies"]}


def _conda(repo):
    """{PyPI name: range} of envs/newllm.yaml's conda and pip entries (``pip`` itself and
    ``python=3.11`` left out)."""
    specs = {}
    for entry in yaml.safe_load((repo / "envs" / "newllm.yaml").read_text())["dependencies"]:
        for line in entry["pip"] if isinstance(entry, dict) else [entry]:
            name, spec = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()
            if name not in {"python", "pip"}:
                specs[CONDA_NAMES.get(name, name).lower()] = SpecifierSet(spec.replace(" ", ""))
    return specs


def _pins(repo):
    pins = {}
    for line in (repo / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            pins[name.lower().replace("_", "-")] = version.split("+")[0]
    return pins


def test_the_conda_environment_has_pyprojects_ranges(repo):
    pyproject, conda = _pyproject(repo), _conda(repo)
    missing = set(pyproject) - set(conda) - {"snakemake"}  # snakemake runs the conda jobs; it is not in them
    assert not missing, f"envs/newllm.yaml lacks {sorted(missing)}"
    differ = {n: (str(pyproject[n]), str(conda[n])) for n in pyproject if n in conda and conda[n] and conda[n] != pyproject[n]}
    assert not differ, f"pyproject.toml and envs/newllm.yaml give other ranges: {differ}"


def test_every_tested_pin_lies_in_the_declared_range(repo):
    """A range must admit the version CI tested, and stay within its major version."""
    pins = _pins(repo)
    for name, spec in _pyproject(repo).items():
        assert name in pins, f"constraints.txt pins no version of {name}"
        assert spec.contains(pins[name], prereleases=True), f"{name}=={pins[name]} (tested) is outside {spec}"
        lower = [s for s in spec if s.operator in (">=", "==")]
        if name != "regex" and lower and pins[name].split(".")[0] != "0":
            assert lower[0].version.split(".")[0] == pins[name].split(".")[0], (
                f"{name}: the range {spec} admits major versions below the tested {pins[name]}"
            )


@pytest.mark.slow
def test_a_non_editable_install_imports_every_module(repo, tmp_path):
    """``pip install .`` (a wheel, not ``-e``) ships the schema with the package: every
    module imports from outside the repository and ``newllm-fit --help`` runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheel = tmp_path / "wheel"
    build = [str(python), "-m", "pip", "wheel", "--no-deps", "-w", str(wheel), str(repo)]  # isolated build: setuptools from PyPI
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    install = [str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", *map(str, wheel.glob("newllm-*.whl"))]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    modules = sorted(
        ".".join(p.relative_to(repo).with_suffix("").parts).removesuffix(".__init__") for p in (repo / "newllm").rglob("*.py")
    )
    code = (
        "import importlib, pathlib, newllm\n"
        f"assert pathlib.Path(newllm.__file__).is_relative_to({str(venv)!r}), newllm.__file__\n"
        f"for name in {modules!r}:\n    importlib.import_module(name)\n"
    )
    run = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    cli = subprocess.run([str(venv / "bin" / "newllm-fit"), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0 and "newllm-fit" in cli.stdout + cli.stderr, cli.stderr
