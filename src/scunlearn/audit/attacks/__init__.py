"""The registry of membership-inference attacks: name → implementation module, defaults, parameter schema.

Like the method registry, this module imports no torch or numpy: the Snakefile checks
``audit.attacks`` against it at parse time. The implementation module is imported only
when an audit job runs the attack.

Adding an attack = a module ``audit/attacks/<name>.py`` defining
``run(data: AuditData, params: dict) -> dict`` (the fields it adds to the audit record)
+ one :func:`spec` entry below (defaults, schema, the summary columns it adds) + an entry
``audit.attacks.<name>: {params}`` in the config. ``per_cell`` is the primary attack:
the verdicts are computed from it, so every study runs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from scunlearn import ScunlearnError
from scunlearn.params import ATTACKER_SCHEMA, check_schema_covers, choice, integer, merge, number, obj, validate

#: the attack every study runs: the verdicts come from it
PRIMARY = "per_cell"


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: defaults, schema and summary columns now, the implementation lazily."""

    name: str
    module: str
    defaults: dict
    schema: dict
    doc: str
    columns: tuple[str, ...] = ()  # summary.tsv columns it adds beyond the contract (a user attack's)

    @property
    def fn(self) -> Callable:
        """``run(data, params) -> dict`` (imports its module, and torch, on first use).

        ``module`` is a module of this package, or a full dotted path for an attack kept elsewhere.
        """
        path = self.module if "." in self.module else f"{__name__}.{self.module}"
        return importlib.import_module(path).run


ATTACKS: dict[str, AttackSpec] = {}


def spec(name: str, defaults: dict, schema: dict, doc: str, module: str | None = None,
         columns: tuple[str, ...] = ()) -> AttackSpec:
    """Add an attack to the registry; its defaults must match its schema key for key."""
    if name in ATTACKS:
        raise ValueError(f"attack '{name}' registered twice")
    check_schema_covers(defaults, schema, f"attack {name} defaults")
    s = AttackSpec(name, module or name, defaults, schema, doc, tuple(columns))
    ATTACKS[name] = s
    return s


def get_attack(name: str) -> AttackSpec:
    """The registered attack ``name``, or a clear error listing the known ones."""
    if name not in ATTACKS:
        raise ScunlearnError(f"unknown attack '{name}' in audit.attacks; registered: {sorted(ATTACKS)}")
    return ATTACKS[name]


def mlp_fold_groups(attacks: dict) -> int:
    """How many neighbourhood groups the MLP attack's folds keep whole: two per fold. The matched
    stage clusters them and the audit reads them, both from this one count."""
    return 2 * int((attacks.get("mlp") or {}).get("folds", 5))


def resolve_attacks(attacks: dict | None) -> dict:
    """Every configured attack's parameters (defaults filled, schema checked), the primary one first."""
    attacks = dict(attacks or {})
    if PRIMARY not in attacks:
        raise ScunlearnError(f"audit.attacks: '{PRIMARY}' is required (the verdicts are computed from it)")
    out = {}
    for name in [PRIMARY, *sorted(k for k in attacks if k != PRIMARY)]:
        a = get_attack(name)
        where = f"audit.attacks.{name}"
        params = merge(a.defaults, attacks[name] or {}, where)
        validate(params, a.schema, where)
        out[name] = params
    return out


# ---------------------------------------------------------------------------------------
# The built-in attacks (their summary columns are part of the contract already).

spec("per_cell",
     {"statistic": "elbo", "shrinkage": 4.0, "centre_by_cell_type": True, "measure": "shift", "test": "spread",
      "negatives": "all"},
     obj(statistic=choice("elbo", "nll"), shrinkage=number(0), centre_by_cell_type={"type": "boolean"},
         measure=choice("shift", "auc"), test=choice("spread", "delong"),
         negatives=choice("all", "matched", "cell_type")),
     "Per-cell statistic calibrated against retrained reference models on the same cell (LiRA-style); "
     "paired tests against retrain and the fine-tuning control.")

spec("mlp",
     {"folds": 5, "repeats": 10,
      "attacker": {"hidden": [256, 256], "dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 300}},
     obj(folds=integer(2), repeats=integer(1), attacker=ATTACKER_SCHEMA),
     "The paper's attack: a fresh spectral-norm MLP per model on per-cell features, out-of-fold, "
     "AUC per fold averaged.")

spec("loss",
     {},
     obj(),
     "The training-free LOSS attack: the model's ELBO of a cell as its membership score.")
