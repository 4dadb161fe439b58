"""Study config files as the workflow reads them: YAML errors with file and line, the size cap, schema
validation with defaults filled and bounded messages. ``python -m scunlearn.configfile FILE...`` checks files
before a run (Snakemake reads ``--configfile`` itself and names neither file nor line of a YAML error).

Apart from the Snakefile, no stage imports this module: it needs PyYAML, which the job environments lack.
"""

from __future__ import annotations

from scunlearn import ScunlearnError
from scunlearn.params import _bounded, check_config_size, config_error


def validate_config(config: dict, schema_path, files) -> None:
    """Validate ``config`` against the study schema, filling its defaults in place (as Snakemake's ``validate``
    does); the first error is raised as :func:`config_error` builds it, from the validator's path and a
    bounded value: never ``str()`` of a jsonschema error, which prints the instance and schema whole."""
    import jsonschema
    import yaml

    with open(schema_path, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    base = jsonschema.Draft202012Validator
    properties = base.VALIDATORS["properties"]

    def with_defaults(validator, props, instance, sch):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(key, sub["default"])
        yield from properties(validator, props, instance, sch)

    validator = jsonschema.validators.extend(base, {"properties": with_defaults})(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ScunlearnError(config_error(error, files))


def read_config_file(path) -> dict:
    """A YAML (or JSON) config file; a syntax error names the file, line and column and shows the line."""
    import yaml

    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise ScunlearnError(f"config file {path}: cannot be read ({e.strerror or e})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        shown = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
        problem = " ".join(filter(None, [e.context, e.problem]))
        raise ScunlearnError(f"{path}:{line}:{col}: not valid YAML: {problem}\n  {line} | {shown}\n"
                             f"  {' ' * len(str(line))} | {' ' * (col - 1)}^") from None
    except yaml.YAMLError as e:
        raise ScunlearnError(f"{path}: not valid YAML ({_bounded(e, 200)})") from None
    if not isinstance(config, dict):
        raise ScunlearnError(f"{path}: a config file holds keys at its top level (a mapping), "
                             f"not {type(config).__name__}")
    return config


def _merge_into(base: dict, other: dict) -> None:
    """``other`` merged into ``base`` recursively, as Snakemake merges several --configfile files."""
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge_into(base[k], v)
        else:
            base[k] = v


def check_config_files(paths, schema_path) -> dict:
    """Read, size-check and validate config files as the workflow will (later files override earlier ones):
    ``python -m scunlearn.configfile FILE...`` shows the file and line of a YAML error, which Snakemake's
    ``Config file is not valid JSON or YAML`` does not."""
    config: dict = {}
    for p in paths:
        one = read_config_file(p)
        check_config_size(one, [p])
        _merge_into(config, one)
    validate_config(config, schema_path, paths)
    return config


def main(argv=None) -> int:
    """Check config files: YAML syntax (file:line:column), size, and the study schema."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m scunlearn.configfile", description=main.__doc__)
    parser.add_argument("configfile", nargs="+", help="config files, in the order given to --configfile")
    parser.add_argument("--schema", default=str(Path(__file__).resolve().parents[2] / "config" / "schema.yaml"),
                        help="the study schema (default: the repository's config/schema.yaml)")
    args = parser.parse_args(argv)
    try:
        check_config_files(args.configfile, args.schema)
    except ScunlearnError as e:
        print(f"error: {e}")
        return 1
    print(f"ok: {', '.join(args.configfile)} parse and match {args.schema}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
