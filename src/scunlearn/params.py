"""Small builders for the JSON schemas of method and attack parameters, and the validation that names the key.

Torch-, numpy- and scanpy-free on purpose: the Snakefile imports the method and attack
registries at parse time, in an environment that may hold only snakemake, jsonschema
and pyyaml. Each builder returns a plain JSON-schema dict; :func:`validate` checks a
parameter dict against an ``obj(...)`` schema and raises :class:`~scunlearn.ScunlearnError`
with the dotted path of the first bad key (``methods.<variant>.params.<key>``,
``audit.attacks.<name>.<key>``).
"""

from __future__ import annotations

from typing import Any

from scunlearn import ScunlearnError


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


def merge(defaults: dict, params: dict, where: str) -> dict:
    """``defaults`` overridden by ``params``, recursively; unknown keys are errors naming ``where``."""
    import copy

    if not isinstance(params, dict):
        raise ScunlearnError(f"{where}: expected a mapping of {sorted(defaults)}, got {params!r}")
    out = copy.deepcopy(defaults)
    for k, v in params.items():
        if k not in defaults:
            raise ScunlearnError(f"{where}: unknown parameter '{k}'; known: {sorted(defaults)}")
        out[k] = merge(defaults[k], v, f"{where}.{k}") if isinstance(defaults[k], dict) else v
    return out


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
        raise ScunlearnError(f"{path}: {_bounded(e.message)}")


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


def _short(value: Any, width: int = 100) -> str:
    """A bounded repr: nested values are elided before they are formatted (a config value may be huge)."""
    import reprlib

    r = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr takes none
    r.maxlevel, r.maxdict, r.maxlist, r.maxstring, r.maxother = 2, 4, 6, width, width
    text = r.repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _bounded(text: str, width: int = 240) -> str:
    """A validator message cut to ``width`` characters (jsonschema quotes the offending value whole)."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


#: most values (mappings, lists and scalars, counted as YAML aliases expand) a config may hold: a study's
#: config has a few hundred; a YAML file whose aliases nest ("billion laughs") expands exponentially and
#: would hang validation and its error message
MAX_CONFIG_VALUES = 100_000


def check_config_size(config: Any, files, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a config of more than ``limit`` values before anything walks it whole (validation, hashing).

    Counts as a walk would visit them, so a value reached through several aliases counts each time;
    stops at the limit, so a nested-alias file is refused in milliseconds.
    """
    count, todo = 0, [config]
    while todo:
        value = todo.pop()
        count += 1
        if count > limit:
            where = ", ".join(map(str, files)) or "the config"
            raise ScunlearnError(
                f"in config {where}: more than {limit:,} values once its YAML aliases (&name / *name) are "
                "expanded; a study's config has a few hundred. Aliases nested in aliases expand exponentially: "
                "write the values out, or use fewer levels of aliases")
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, (list, tuple)):
            todo.extend(value)


def config_error(err: BaseException, files) -> str:
    """A config file's schema error in a few lines (file, key, value, reason), never the whole schema that
    jsonschema's own message prints; ``err`` is the ValidationError or an error raised while handling one."""
    ve: BaseException | None = err
    while ve is not None and not hasattr(ve, "validator"):
        ve = ve.__cause__ or ve.__context__
    where = ", ".join(map(str, files)) or "the config"
    if ve is None:
        lines = str(err).strip().splitlines()
        return f"in config {where}: {lines[0] if lines else type(err).__name__}"
    path, value, reason = list(ve.absolute_path), ve.instance, ve.message
    schema = ve.schema if isinstance(ve.schema, dict) else {}
    notes = []
    if ve.validator == "additionalProperties" and isinstance(value, dict):
        known = schema.get("properties", {})
        unknown = [k for k in value if k not in known]
        if unknown:  # the unexpected key itself, not its parent
            path, value = path + [unknown[0]], value[unknown[0]]
            reason = f"unknown key '{unknown[0]}'" + (f" (also unknown: {', '.join(map(str, unknown[1:]))})"
                                                     if len(unknown) > 1 else "")
            notes.append(f"known keys here: {', '.join(sorted(known))}")
    elif getattr(ve, "context", None):
        import jsonschema

        reason += f" ({_bounded(jsonschema.exceptions.best_match(ve.context).message, 120)})"
    if schema.get("description") and ve.validator not in ("additionalProperties", "required"):
        notes.append(f"the key: {' '.join(str(schema['description']).split())}")
    key = ".".join(map(str, path)) or "(top level)"
    lines = [f"in config {where}:", f"  key:    {key}", f"  value:  {_short(value)}", f"  reason: {_bounded(reason)}"]
    lines += [f"  {n}" for n in notes]
    lines.append("  (every key is documented in config/README.md and checked by config/schema.yaml)")
    return "\n".join(lines)

