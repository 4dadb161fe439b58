"""The registry of unlearning methods: name → implementation module, defaults, parameter schema.

This module (with :mod:`scunlearn.params`) imports no torch, numpy or scanpy: the Snakefile
imports it at parse time to check every configured variant's parameters, in an
environment that may hold only snakemake, jsonschema and pyyaml. The implementation
is imported only when :attr:`MethodSpec.fn` is first used (in the unlearning job).

Adding a method = its module + one :func:`spec` entry in the table below + a variant in
the config. The module ``methods/<module>.py`` defines ``def <function>(ctx:
UnlearnContext) -> VAE`` (by default ``function`` = the method's name); the entry holds
the defaults and the schema of its parameters, and is the one place users read them.

A method is called as ``fn(ctx)`` and must never need audit cells (it cannot reach them).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from .. import ScunlearnError
from ..params import ATTACKER_SCHEMA, check_schema_covers, choice, int_list, integer, merge, number, obj, validate


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: defaults + schema now, the implementation lazily."""

    name: str
    module: str
    function: str
    defaults: dict
    schema: dict
    doc: str
    #: extra inputs the unlearn rule gives this method, by name (files the workflow makes for it,
    #: e.g. sisa's shard ensemble); they reach it as ``ctx.inputs[name]`` (paths), with the barcodes
    #: of its forget / retain / validation rows as ``ctx.inputs["barcodes"]``. Empty for most methods.
    needs: tuple[str, ...] = ()

    @property
    def fn(self) -> Callable:
        """The implementation ``fn(ctx) -> VAE`` (imports its module, and torch, on first use)."""
        mod = importlib.import_module(f"{__name__}.{self.module}")
        return getattr(mod, self.function)


# Kept as the old name: code that did ``from scunlearn.methods import Method`` still works.
Method = MethodSpec

REGISTRY: dict[str, MethodSpec] = {}


def spec(name: str, defaults: dict, schema: dict, doc: str, module: str | None = None,
         function: str | None = None, needs: tuple[str, ...] = ()) -> MethodSpec:
    """Add a method to the registry; its defaults must match its schema key for key.

    ``needs``: names of the extra inputs it needs from the workflow (see :attr:`MethodSpec.needs`).
    """
    if name in REGISTRY:
        raise ValueError(f"method '{name}' registered twice")
    check_schema_covers(defaults, schema, f"method {name} defaults")
    s = MethodSpec(name, module or name, function or name, defaults, schema, doc, tuple(needs))
    REGISTRY[name] = s
    return s


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``, or a clear error listing the known ones."""
    if name not in REGISTRY:
        raise ScunlearnError(f"unknown unlearning method '{name}'; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def resolve_params(name: str, params: dict | None, variant: str | None = None) -> dict:
    """The method's defaults overridden by ``params``, checked against its schema.

    Unknown keys, wrong types and out-of-range values are :class:`ScunlearnError`\\ s
    naming ``methods.<variant>.params.<key>``.
    """
    m = get_method(name)
    where = f"methods.{variant or name}.params"
    out = merge(m.defaults, {} if params is None else params, where)
    validate(out, m.schema, where)
    return out


# ---------------------------------------------------------------------------------------
# The method table. Loss scale everywhere: per gene (the negative ELBO of a cell divided
# by the number of genes, ≈ 0.9 nats), the scale of the paper's reference code (a mean
# over matrix elements), so its λ, α and damping keep their meaning; see each module.

ATTACKER = {"hidden": [256, 256], "dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 300}
SHADOW = {"hidden": [256, 256], "dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100}

_FINETUNE = {"finetune_epochs": 10, "finetune_lr": 1e-3, "batch_size": 128, "patience": 5}
_FINETUNE_SCHEMA = {"finetune_epochs": integer(0), "finetune_lr": number(positive=True),
                    "batch_size": integer(2), "patience": integer(1)}

spec("frozen_critic",
     {"n_critics": 1, "retain_weight": 5.0, "epochs": 10, "lr": 1e-4, "batch_size": 128, "match_k": 7,
      "critic": ATTACKER, "shadow": SHADOW, "shadow_every": 1},
     obj(n_critics=integer(1), retain_weight=number(positive=True), epochs=integer(1),
         lr=number(positive=True), batch_size=integer(2), match_k=integer(1), critic=ATTACKER_SCHEMA,
         shadow=ATTACKER_SCHEMA, shadow_every=integer(0)),
     "Frozen pre-trained critics; the VAE minimises retain_weight · per-gene retain loss "
     "+ the critics' membership score.")

spec("extragradient",
     {"retain_weight": 10.0, "n_attackers": 3, "epochs": 50, "lr": 1e-4, "attacker_lr_ratio": 5.0,
      "batch_size": 128, "validation_per_forget": 4, "match_k": 7,
      "attacker": {"hidden": [256, 256], "dropout": 0.3},
      "shadow": SHADOW, "shadow_every": 1,
      "early_stop": {"signal": "loss_gap", "target": 0.0, "tolerance": 0.002, "patience": 10,
                     "min_epochs": 5, "smoothing": 3}},
     obj(retain_weight=number(positive=True), n_attackers=integer(1), epochs=integer(1),
         lr=number(positive=True), attacker_lr_ratio=number(positive=True), batch_size=integer(2),
         validation_per_forget=integer(1), match_k=integer(1),
         attacker=obj(hidden=int_list(), dropout=number(0, 1)),
         shadow=ATTACKER_SCHEMA, shadow_every=integer(0),
         early_stop=obj(signal=choice("loss_gap", "shadow_auc"), target=number(), tolerance=number(0),
                        patience=integer(1), min_epochs=integer(0), smoothing=integer(1))),
     "Zero-sum extragradient game of the VAE against co-trained attackers; early stop on a forget/validation loss gap.")

spec("fisher",
     {"alpha": 1e-3, "damping": 0.1, "steps": 100, "max_rise": 0.5, "fisher_cells": 1000, "chunk_size": 128,
      **_FINETUNE, "match_k": 7, "log_every": 10},
     obj(alpha=number(positive=True), damping=number(positive=True), steps=integer(0), max_rise=number(positive=True),
         fisher_cells=integer(1), chunk_size=integer(1), **_FINETUNE_SCHEMA, match_k=integer(1),
         log_every=integer(1)),
     "Scrub: ascend the forget loss preconditioned by the inverse damped, unit-mean diagonal Fisher; "
     "then fine-tune on retain.")

spec("fisher_noise",
     {"alpha": 1e-4, "damping": 0.1, "fisher_cells": 1000, "chunk_size": 128, **_FINETUNE, "match_k": 7},
     obj(alpha=number(positive=True), damping=number(positive=True), fisher_cells=integer(1),
         chunk_size=integer(1), **_FINETUNE_SCHEMA, match_k=integer(1)),
     "Golatkar et al. (2020) Fisher forgetting: Gaussian noise of variance alpha / (F + damping) per parameter; "
     "then fine-tune.",
     module="fisher")

spec("retain_finetune",
     {"epochs": 10, "lr": 1e-3, "batch_size": 128, "patience": 5, "match_k": 7},
     obj(epochs=integer(1), lr=number(positive=True), batch_size=integer(2), patience=integer(1),
         match_k=integer(1)),
     "The control: fine-tune on retain cells only, exactly as the fine-tuning inside fisher.")

spec("sisa",
     {"shards": 4, "match_k": 7},
     obj(shards=integer(1), match_k=integer(1)),
     "Bourtoule et al. (2021) SISA, exact unlearning: S shards trained independently from the start "
     "(training recipe = config train); retrain from scratch only the shards holding forget cells. "
     "The audited model is the shard ensemble.",
     needs=("shards", "shard_assignment", "setup_benchmark"))
