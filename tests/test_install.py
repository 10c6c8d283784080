"""The three ways to install (issue 12) agree: pyproject.toml's ranges, the conda
environment of ``snakemake --sdm conda`` (envs/newllm.yaml) and the tested pins in
constraints.txt."""

import re
import tomllib

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
