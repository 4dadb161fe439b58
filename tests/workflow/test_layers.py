"""The library's layers: each folder of src/scunlearn imports only from the layers below it (or its own).

base (io, params, configfile, costs, runtime, codedeps) < data < vae < membership < methods < audit < report < stages,
the order of the workflow's DAG. Imports inside functions count too (they run as well).
"""

from pathlib import Path

import pytest

from scunlearn import codedeps

SRC = codedeps.SRC
LAYERS = ["base", "data", "vae", "membership", "methods", "audit", "report", "stages"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "base"


def _modules() -> list[str]:
    return sorted(".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
                  for p in (SRC / "scunlearn").rglob("*.py"))


def test_every_module_has_a_layer_and_the_top_level_is_small():
    top = [m for m in _modules() if m.count(".") == 1 and _layer(m) == "base"]
    assert set(top) <= {"scunlearn.io", "scunlearn.params", "scunlearn.costs", "scunlearn.runtime",
                        "scunlearn.codedeps", "scunlearn.configfile"}, top
    for layer in LAYERS[1:]:
        assert (SRC / "scunlearn" / layer / "__init__.py").exists(), layer


@pytest.mark.parametrize("module", _modules())
def test_module_imports_only_from_its_layer_or_below(module):
    path = codedeps.module_file(module)
    _, own = codedeps.imports(codedeps.parsed(Path(path)), module, path.name == "__init__.py")
    mine = LAYERS.index(_layer(module))
    above = sorted(m for m in own if LAYERS.index(_layer(m)) > mine)
    assert not above, f"{module} (layer {_layer(module)}) imports from layers above it: {above}"


def test_the_layer_check_sees_a_violation(tmp_path):
    """The check itself: a data module that imports the VAE is caught."""
    pkg = tmp_path / "scunlearn" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "scunlearn" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (tmp_path / "scunlearn" / "vae.py").write_text("")
    (pkg / "bad.py").write_text("def f():\n    from scunlearn.vae import model\n")
    tree = codedeps.parsed(pkg / "bad.py")
    _, own = codedeps.imports(tree, "scunlearn.data.bad", False, tmp_path)
    assert any(LAYERS.index(_layer(m)) > LAYERS.index("data") for m in own)
