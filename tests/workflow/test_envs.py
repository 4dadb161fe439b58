"""The conda environments (envs/*.yaml), checked offline: conda channels are not reachable from CI.

A rule's conda environment must hold every third-party package its code imports. Snakemake's
script preamble adds the calling environment's ``sys.path``, so a run launched from the project
venv would hide a missing package; these tests compare the files with the imports instead.
"""

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from rattler import MatchSpec

from scunlearn import codedeps

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))

#: import name -> conda-forge package name, where they differ
CONDA_NAME = {
    "sklearn": "scikit-learn",
    "skmisc": "scikit-misc",
    "yaml": "pyyaml",
    "torch": "pytorch",
    "igraph": "python-igraph",
}
#: pip (pyproject) name -> conda-forge name, where they differ
PIP_TO_CONDA = {"torch": "pytorch", "igraph": "python-igraph"}
#: pyproject dependencies no rule imports: Snakemake runs the workflow and validates the config
#: (jsonschema) outside the rule environments
NOT_IN_RULE_ENVS = {"snakemake", "jsonschema"}
#: packages a module needs without importing them: scanpy loads them for the flavours used
HIDDEN_IMPORTS = {"scunlearn.data.preprocess": {"skmisc", "igraph"}}
#: the environment variables in common.smk -> file (the CUDA one is chosen by config `device`, for the
#: audit by `audit.device`)
ENV_VARS = {"ENV_DATA": "data.yaml", "ENV_TORCH": "torch.yaml", "ENV_REPORT": "report.yaml",
            "ENV_AUDIT": "torch.yaml"}
#: conda-only or build-support packages that need no pyproject counterpart
CONDA_ONLY = {"python"}


def _env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _specs(path: Path) -> list[MatchSpec]:
    return [MatchSpec(d) for d in _env(path)["dependencies"] if isinstance(d, str)]


def _names(path: Path) -> set[str]:
    return {m.name.normalized for m in _specs(path)}


def _pinned(path: Path) -> dict[str, str]:
    """Package -> exact version (X.Y.Z) of every entry but python."""
    out = {}
    for d in _env(path)["dependencies"]:
        name, version = re.match(r"^([A-Za-z0-9_.-]+)=?=([0-9][^=\s]*)", d).groups()
        out[name] = version
    return out


def _pyproject_deps() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {PIP_TO_CONDA.get(r.name.lower(), r.name.lower()): r for r in map(Requirement, deps)}


# ---------------------------------------------------------------- the files themselves


def test_env_files_exist():
    assert {p.name for p in ENV_FILES} >= {"data.yaml", "torch.yaml", "torch-cuda.yaml", "report.yaml"}


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_is_conda_forge_only_and_every_entry_is_a_matchspec(path):
    env = _env(path)
    assert set(env) == {"channels", "dependencies"}
    assert env["channels"] == ["conda-forge", "nodefaults"]
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"{path.name}: {dep!r} (no pip section: the library comes from src/)"
        # a strict shape: name, then =version or ==version, then an optional =build
        assert re.fullmatch(r"[a-z0-9_.-]+(==?[0-9][0-9A-Za-z.*]*)(=[A-Za-z0-9_.*]+)?", dep), dep
        spec = MatchSpec(dep)
        assert spec.name.normalized == dep.split("=")[0]
        assert spec.version is not None, f"{path.name}: {dep} is not pinned"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_exact_versions_within_pyproject_ranges(path):
    deps = _pyproject_deps()
    for name, version in _pinned(path).items():
        if name == "python":
            req = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
            assert Version(version) in Requirement(f"python{req}").specifier
            continue
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{path.name}: {name}={version} is not an exact pin"
        if name in CONDA_ONLY:
            continue
        assert name in deps, f"{path.name}: {name} is not a dependency in pyproject.toml"
        req = deps[name]
        assert Version(version) in req.specifier, f"{path.name}: {name} {version} outside pyproject's {req}"
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        # the same major version as pyproject's floor, or pyproject allows the newer major explicitly
        assert all(Version(version).major >= lv.major for lv in lower)


def test_envs_agree_with_each_other():
    seen: dict[str, tuple[str, str]] = {}
    for path in ENV_FILES:
        for name, version in _pinned(path).items():
            if name in seen:
                assert seen[name][0] == version, f"{name}: {version} in {path.name}, {seen[name]} elsewhere"
            seen[name] = (version, path.name)


def test_cpu_env_is_the_default_and_cuda_variant_differs_only_in_the_pytorch_build():
    cpu = _env(ROOT / "envs/torch.yaml")["dependencies"]
    cuda = _env(ROOT / "envs/torch-cuda.yaml")["dependencies"]
    torch_cpu = [MatchSpec(d) for d in cpu if d.startswith("pytorch")]
    torch_cuda = [MatchSpec(d) for d in cuda if d.startswith("pytorch")]
    assert [str(m.build) for m in torch_cpu] == ["cpu_*"]
    assert [str(m.build) for m in torch_cuda] == ["cuda*"]
    assert str(torch_cpu[0].version) == str(torch_cuda[0].version)
    assert [d for d in cpu if not d.startswith("pytorch")] == [d for d in cuda if not d.startswith("pytorch")]


def test_every_pyproject_dependency_is_in_a_rule_environment():
    everything = set().union(*map(_names, ENV_FILES))
    missing = set(_pyproject_deps()) - NOT_IN_RULE_ENVS - everything
    assert not missing, f"pyproject dependencies in no envs/*.yaml: {sorted(missing)}"


def test_data_and_report_environments_hold_no_torch():
    assert "pytorch" not in _names(ROOT / "envs/data.yaml")
    assert "pytorch" not in _names(ROOT / "envs/report.yaml")


# ---------------------------------------------------------------- imports vs environments


#: third-party packages imported only inside functions that the stages of other environments never call:
#: runtime imports torch in its device and seed functions (torch stages), not in tune_allocator (every stage)
LAZY_ONLY = {"scunlearn.runtime": {"torch"}}


def _third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"__future__", "scunlearn", "_stage"}}


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> tuple[set[str], set[str]]:
    """(third-party top-level names, scunlearn modules) imported anywhere in ``tree`` (scunlearn.codedeps)."""
    third, own = codedeps.imports(tree, module, is_pkg)
    return _third_party(third), own


def _module_third_party(module: str) -> set[str]:
    path = codedeps.module_file(module)
    third = _imports(codedeps.parsed(path), module, path.name == "__init__.py")[0]
    return (third - LAZY_ONLY.get(module, set())) | HIDDEN_IMPORTS.get(module, set())


def _stage_closure(stage: str) -> set[str]:
    """Third-party packages of one stage function (``module:function``): its own imports (the module's
    top level, the function and the module functions it calls), then every scunlearn module they reach
    (the rule's code inputs, scunlearn.codedeps)."""
    module = stage.partition(":")[0]
    mods, _ = codedeps.stage_imports(stage)
    third = _third_party(codedeps.stage_function_imports(stage)[0])
    return third.union(*(_module_third_party(m) for m in mods - {module}))


def _rules() -> dict[str, dict]:
    """Rule -> {'conda': variable name, 'script': path}, read from workflow/rules/*.smk."""
    rules = {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        text = smk.read_text()
        heads = list(re.finditer(r"^(?:rule (\w+):|use rule (\w+) as (\w+) with:)$", text, re.M))
        for i, h in enumerate(heads):
            body = text[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            name = h.group(1) or h.group(3)
            info = dict(rules.get(h.group(2), {})) if h.group(2) else {}
            if m := re.search(r"^    conda:\n        (\w+)", body, re.M):
                info["conda"] = m.group(1)
            if m := re.search(r'^    script:\n        "([^"]+)"', body, re.M):
                info["script"] = (smk.parent / m.group(1)).resolve()
            rules[name] = info
    return rules


def test_rule_parsing_finds_every_rule_with_a_script():
    rules = _rules()
    assert {"acquire", "preprocess", "baseline", "retrain", "unlearn", "audit", "aggregate", "report"} <= set(rules)
    for name, info in rules.items():
        assert "script" in info and info["script"].exists(), name
        assert info.get("conda") in ENV_VARS, f"rule {name}: conda env {info.get('conda')!r}"


def test_common_smk_points_to_the_env_files():
    text = (ROOT / "workflow/rules/common.smk").read_text()
    for var, file in ENV_VARS.items():
        assert re.search(rf'^{var} = .*"\.\./\.\./envs/{re.escape(file)}"', text, re.M), var
    # the CUDA build when config asks for CUDA
    assert re.search(r'^ENV_TORCH = "\.\./\.\./envs/torch-cuda\.yaml" if .*config\["device"\]', text, re.M)
    assert re.search(r'^ENV_AUDIT = "\.\./\.\./envs/torch-cuda\.yaml" if AUDIT_GPUS', text, re.M)


@pytest.mark.parametrize("rule", sorted(_rules()))
def test_rule_environment_holds_every_package_its_code_imports(rule):
    info = _rules()[rule]
    script = info["script"]
    text = script.read_text()
    stage = re.search(r"run\((stage_\w+), snakemake\)", text).group(1)
    module = re.search(rf"from (scunlearn\.stages\.\w+) import {stage}\b", text).group(1)
    needed = _stage_closure(f"{module}:{stage}")
    for extra in (script, script.parent / "_stage.py"):
        needed |= _imports(ast.parse(extra.read_text()), "_script", False)[0]
    env = ROOT / "envs" / ENV_VARS[info["conda"]]
    have = _names(env)
    missing = {CONDA_NAME.get(n, n) for n in needed} - have
    assert not missing, f"rule {rule} ({env.name}) imports packages its environment lacks: {sorted(missing)}"
    if info["conda"] == "ENV_TORCH":  # the CUDA variant serves the same rules
        assert not {CONDA_NAME.get(n, n) for n in needed} - _names(ROOT / "envs/torch-cuda.yaml")


def test_every_third_party_import_in_src_and_scripts_is_in_an_environment():
    files = [*SRC.rglob("*.py"), *(ROOT / "workflow/scripts").glob("*.py")]
    needed = set()
    for f in files:
        module = ".".join(f.relative_to(SRC).with_suffix("").parts) if f.is_relative_to(SRC) else "_script"
        needed |= _imports(ast.parse(f.read_text()), module.removesuffix(".__init__"), f.name == "__init__.py")[0]
    everything = set().union(*map(_names, ENV_FILES))
    assert needed >= {"torch", "numpy", "sklearn", "yaml"}  # the scan sees imports at all
    missing = {CONDA_NAME.get(n, n) for n in needed} - everything
    assert not missing, f"imported but in no envs/*.yaml: {sorted(missing)}"
