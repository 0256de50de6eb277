"""The conda environment of the rules (envs/histofuse.yaml) can run the package.

Under ``snakemake --sdm conda`` the package is installed without dependencies, so the
environment file alone must install every third-party module the package imports, at the
versions of uv.lock.
"""

import ast
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs" / "histofuse.yaml"
PACKAGE = ROOT / "src" / "histofuse"


def env_requirements(path: Path = ENV_FILE) -> list[Requirement]:
    """The pip entries of a conda environment file."""
    deps = yaml.safe_load(path.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return [Requirement(line) for line in pip]


def third_party_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Top-level modules of the absolute imports in ``package`` that are neither stdlib nor it."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "histofuse":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def lock_versions() -> dict[str, set[str]]:
    """Every package of uv.lock and its locked versions (one per resolution fork)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for pkg in lock["package"]:
        versions.setdefault(canonicalize_name(pkg["name"]), set()).add(pkg["version"])
    return versions


def missing_imports(requirements: list[Requirement]) -> dict[str, list[str]]:
    """Imported modules no requirement installs: module → distributions that would."""
    installed = {canonicalize_name(r.name) for r in requirements}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module in third_party_imports():
        providers = sorted({canonicalize_name(d) for d in dists.get(module, [])})
        if not installed.intersection(providers):
            missing[module] = providers
    return missing


def test_the_package_imports_third_party_modules():
    # Guards the scan itself: an empty result would make the next test pass vacuously.
    assert {"torch", "sklearn", "peft", "matplotlib", "yaml"} <= set(third_party_imports())


def test_env_installs_every_module_the_package_imports():
    missing = missing_imports(env_requirements())
    assert not missing, f"envs/histofuse.yaml installs no distribution of {missing}"


def test_check_catches_an_env_listing_only_direct_dependencies(tmp_path):
    # The hand-written file this replaced: direct dependencies, no peft, no matplotlib.
    env = tmp_path / "env.yaml"
    env.write_text(
        "dependencies:\n  - pip:\n"
        + "".join(f"      - {name}\n" for name in ("torch", "scikit-learn", "pyyaml"))
    )
    missing = missing_imports(env_requirements(env))
    assert {"peft", "matplotlib"} <= set(missing)


def test_env_pins_every_package_at_the_locked_version():
    locked = lock_versions()
    for req in env_requirements():
        name = canonicalize_name(req.name)
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"{req} is not an exact pin"
        assert pins[0].version in locked.get(name, set()), (
            f"envs/histofuse.yaml pins {req}; uv.lock has {name} {sorted(locked.get(name, []))}"
        )


def test_env_installs_every_direct_dependency_of_the_lock():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = next(p for p in lock["package"] if p["name"] == "histofuse")
    direct = {canonicalize_name(d["name"]) for d in project["dependencies"]}
    installed = {canonicalize_name(r.name) for r in env_requirements()}
    assert direct <= installed, f"missing from envs/histofuse.yaml: {sorted(direct - installed)}"


def test_env_file_is_what_make_conda_env_writes():
    uv = shutil.which("uv") or next(
        (str(p) for p in [ROOT / ".tools" / "bin" / "uv"] if p.is_file()), None
    )
    if uv is None:
        pytest.skip("uv is not installed (make conda-env installs it into .tools/)")
    spec = importlib.util.spec_from_file_location("envs_export", ROOT / "envs" / "export.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    try:
        expected = export.render(export.export_requirements(uv))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"uv export failed: {exc.stderr}")
    assert ENV_FILE.read_text() == expected, "envs/histofuse.yaml is stale: run `make conda-env`"
