"""Small builders for the JSON schemas of method parameters, and the validation that names the key.

Torch-, numpy- and scanpy-free on purpose: the Snakefile imports the registry at parse
time, in an environment that may hold only snakemake, jsonschema and pyyaml. Each
builder returns a plain JSON-schema dict; :func:`validate` checks a parameter dict
against an ``obj(...)`` schema and raises :class:`~scunlearn.ScunlearnError` with the
dotted path of the first bad key (``methods.<variant>.params.<key>``).
"""

from __future__ import annotations

from typing import Any

from .. import ScunlearnError


def integer(minimum: int | None = None, maximum: int | None = None) -> dict:
    """An integer (``True``/``False`` and ``3.0`` are refused) within [minimum, maximum]."""
    s: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    return s


def number(minimum: float | None = None, maximum: float | None = None, positive: bool = False) -> dict:
    """A real number within [minimum, maximum]; ``positive`` means strictly above 0."""
    s: dict[str, Any] = {"type": "number"}
    if positive:
        s["exclusiveMinimum"] = 0
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    return s


def choice(*values) -> dict:
    """One of the listed values."""
    return {"enum": list(values)}


def int_list(minimum: int = 1, min_items: int = 1) -> dict:
    """A non-empty list of integers ≥ ``minimum`` (layer widths)."""
    return {"type": "array", "items": integer(minimum), "minItems": min_items}


def obj(**properties: dict) -> dict:
    """A mapping with exactly these keys allowed (all optional: defaults fill the rest)."""
    return {"type": "object", "properties": properties, "additionalProperties": False}


# the attacker settings shared by critics, shadow attackers and the extragradient attackers
ATTACKER_SCHEMA = obj(hidden=int_list(), dropout=number(0, 1), lr=number(positive=True),
                      weight_decay=number(0), epochs=integer(1))


def validate(params: dict, schema: dict, where: str) -> None:
    """Raise ``ScunlearnError('<where>.<key>: <reason>')`` for the first error, ordered by key path."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a dependency of snakemake and of scunlearn
        return
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        path = ".".join([where, *map(str, e.absolute_path)])
        raise ScunlearnError(f"{path}: {e.message}")


def check_schema_covers(defaults: dict, schema: dict, where: str) -> None:
    """Every default key has a schema entry and every schema key a default, recursively;
    the defaults themselves validate. Called once per method spec at import time."""
    props = schema.get("properties", {})
    if set(props) != set(defaults):
        raise ValueError(f"{where}: schema keys {sorted(props)} differ from default keys {sorted(defaults)}")
    for k, v in defaults.items():
        if isinstance(v, dict):
            check_schema_covers(v, props[k], f"{where}.{k}")
    validate(defaults, schema, where)
