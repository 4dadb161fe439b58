"""The library code a stage runs, read from the imports (``ast``, no import executed, no torch).

A rule's code inputs are the files of every scunlearn module its stage function imports,
followed transitively: the stage module's top-level imports, the function's own imports and
those of the module's functions it calls, then every import (top-level or inside a
function) of each library module reached, and the ``__init__`` of every package on the
way. Registries that import an implementation by name at run time (the methods, the
attacks) are not visible to ``ast``: the rule names those modules as ``extra``.

The Snakefile calls this at parse time, in an environment that may hold only Snakemake;
``tests/workflow`` checks that every module a stage really imports is among its inputs.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

#: the folder that holds the ``scunlearn`` package
SRC = Path(__file__).resolve().parents[1]
PACKAGE = "scunlearn"


def module_file(module: str, src: Path = SRC) -> Path | None:
    """The file of a scunlearn module (``a/b.py`` or ``a/b/__init__.py``), None if it is not one."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = src.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(node: ast.AST):
    """``ast.walk`` that skips ``if TYPE_CHECKING:`` blocks (imports for annotations only, never run)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        todo.extend(c for c in ast.iter_child_nodes(n) if not _is_type_checking(c))


def imports(node: ast.AST, module: str, is_package: bool, src: Path = SRC) -> tuple[set[str], set[str]]:
    """(third-party top-level package names, scunlearn modules) imported anywhere under ``node``.

    ``module``: the dotted name of the file ``node`` comes from (for relative imports).
    ``from scunlearn.x import y`` counts ``scunlearn.x.y`` too when ``y`` is a module.
    """
    third, own = set(), set()
    package = module if is_package else module.rpartition(".")[0]
    for n in _walk(node):
        if isinstance(n, ast.Import):
            for a in n.names:
                (own if a.name.split(".")[0] == PACKAGE else third).add(
                    a.name if a.name.split(".")[0] == PACKAGE else a.name.split(".")[0])
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (n.level - 1)])
                name = f"{base}.{n.module}" if n.module else base
            else:
                name = n.module or ""
            if name.split(".")[0] != PACKAGE:
                if name.split(".")[0] != "__future__":
                    third.add(name.split(".")[0])
                continue
            own.add(name)
            own.update(f"{name}.{a.name}" for a in n.names if module_file(f"{name}.{a.name}", src))
    return third, own


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> ast.Module:
    """The syntax tree of a source file, parsed once."""
    return ast.parse(path.read_text(), filename=str(path))


def closure(modules: Iterable[str], src: Path = SRC) -> tuple[set[str], set[str]]:
    """(scunlearn modules, third-party packages) reached from ``modules`` by every import in them."""
    seen, third, todo = set(), set(), list(modules)
    while todo:
        mod = todo.pop()
        path = module_file(mod, src)
        if path is None or mod in seen:
            continue
        seen.add(mod)
        if "." in mod:  # a package's __init__ runs before any of its modules
            todo.append(mod.rpartition(".")[0])
        t, own = _module_imports(mod, path, src)
        third |= t
        todo += own
    return seen, third


@functools.lru_cache(maxsize=None)
def _module_imports(module: str, path: Path, src: Path) -> tuple[frozenset[str], frozenset[str]]:
    """:func:`imports` of a whole module file, once per module (the Snakefile asks for many closures)."""
    third, own = imports(parsed(path), module, path.name == "__init__.py", src)
    return frozenset(third), frozenset(own)


def stage_function_imports(stage: str, src: Path = SRC) -> tuple[set[str], set[str]]:
    """(third-party packages, scunlearn modules) imported by stage function ``stage`` (``"module:function"``)
    itself: its module's top-level imports, its own and those of the module's functions it calls.

    Only the named function (and what it calls) counts from the stage module, so two stages of
    one module can depend on different code.
    """
    module, _, function = stage.partition(":")
    path = module_file(module, src)
    if path is None:
        raise ValueError(f"codedeps: no module {module} under {src}")
    tree = parsed(path)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if function not in funcs:
        raise ValueError(f"codedeps: no function {function} in {path}")
    top = ast.Module(body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))],
                     type_ignores=[])
    is_pkg = path.name == "__init__.py"
    third, own = imports(top, module, is_pkg, src)
    done, todo = set(), [function]
    while todo:
        f = todo.pop()
        if f in done:
            continue
        done.add(f)
        t, o = imports(funcs[f], module, is_pkg, src)
        third, own = third | t, own | o
        todo += [n.id for n in ast.walk(funcs[f]) if isinstance(n, ast.Name) and n.id in funcs]
    if "." in module:  # its package's __init__ runs first
        own.add(module.rpartition(".")[0])
    return third, own - {module}


def stage_imports(stage: str, extra: Iterable[str] = (), src: Path = SRC) -> tuple[set[str], set[str]]:
    """(scunlearn modules, third-party packages) of stage function ``stage`` (``"module:function"``) and
    of the ``extra`` modules, followed transitively; the stage module itself is among the modules."""
    third, own = stage_function_imports(stage, src)
    mods, t = closure(own | set(extra), src)
    return mods | {stage.partition(":")[0]}, third | t


def stage_code(stage: str, extra: Iterable[str] = (), src: Path = SRC) -> list[str]:
    """The files of :func:`stage_imports`' modules, sorted: a rule's code inputs."""
    mods, _ = stage_imports(stage, extra, src)
    return sorted(str(module_file(m, src)) for m in mods)
