# Shared definitions: config-derived names, wildcard constraints, tracked library code.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError
from scunlearn import ScunlearnError
from scunlearn.methods import resolve_params

RUN = config["run"]
OUT = f"results/{RUN}"
FORGET = list(config["forget_sets"])
SEEDS = [int(s) for s in config["train"]["seeds"]]
MATCH_SEED = SEEDS[0]  # matched negatives come from the latent of the first baseline seed
ENV = "../../envs/scunlearn.yaml"


def _variants():
    """Resolve every configured method variant now: unknown methods or parameters fail at parse time."""
    out = {}
    for name, v in config["methods"].items():
        unknown = set(v.get("forget_sets", [])) - set(FORGET)
        if unknown:
            raise WorkflowError(f"config methods.{name}.forget_sets: unknown forget sets {sorted(unknown)}")
        try:
            params = resolve_params(v["method"], v.get("params", {}), name)
        except ScunlearnError as e:
            raise WorkflowError(f"config: {e}") from None
        out[name] = {"method": v["method"], "params": params, "forget_sets": v.get("forget_sets", FORGET)}
    return out


VARIANTS = _variants()


def lib(*modules):
    """Library modules a rule depends on, declared as inputs so that editing them reruns the rule."""
    return [f"src/scunlearn/{m}" for m in ("__init__.py", "io.py", "pipeline.py", *modules)]


METHOD_MODULES = sorted(f"methods/{p.name}" for p in Path("src/scunlearn/methods").glob("*.py"))


def res(kind, key, default):
    return config.get("resources", {}).get(kind, {}).get(key, default)


def alternatives(names):
    return "|".join(sorted(names, key=len, reverse=True)) or "NONE"


wildcard_constraints:
    forget=alternatives(FORGET),
    variant=alternatives(VARIANTS),
    seed=r"\d+",
