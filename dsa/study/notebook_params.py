"""Validation of notebook parameters, robust to papermill's parameter injection.

How a notebook uses it (three cells, in this order)::

    # cell 1 (imports): take a snapshot of the namespace before any parameter exists
    from dsa.study.notebook_params import check_params, snapshot_namespace, between, one_of
    _ns_before = snapshot_namespace(globals())

    # cell 2, tagged "parameters": ANNOTATED assignments only; the annotation declares the parameter
    seq_len: int = 256   # tokens
    top_k: int = 32      # keys per query

    # (papermill inserts its "injected-parameters" cell here: plain ``name = value`` lines)

    # cell 3: validate
    P = check_params(globals(), _ns_before, rules={"top_k": between(1, "seq_len")})

Why this is robust:

- The declared parameters are the names annotated in the parameters cell: module-level annotated
  assignments land in the namespace's ``__annotations__`` (papermill's injected cell never annotates, and
  papermill's own ``--help-notebook`` reads the same annotations as types).
- An unknown parameter (``papermill -p no_such_thing 1``) shows up as a name that is new since the
  snapshot, or as an existing global (``-p torch 3``) whose object changed, without being declared: it is
  reported by name, with the declared list, before any work is done.
- Types are checked against the annotation (an int is accepted for a float, a bool never for an int),
  values against the ``rules`` (which may refer to other parameters by name, e.g. ``top_k <= seq_len``).

Everything fails with :class:`NotebookParameterError`, whose message names the parameter.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

# Names IPython itself creates or rebinds in the user namespace at every cell.
_IPYTHON_NAME = re.compile(r"^(_+|_i+|_i?\d+|_oh|_dh|_ih|In|Out|exit|quit|get_ipython|__builtins__|__annotations__)$")


class NotebookParameterError(ValueError):
    """A notebook parameter is unknown, of the wrong type, or out of range."""


@dataclass(frozen=True)
class NamespaceSnapshot:
    """The names (and the identity of their objects) present before the parameters cell."""

    objects: Mapping[str, Any]  # name -> the object itself (a reference, so no id can be reused)
    annotations: frozenset[str]


def snapshot_namespace(ns: Mapping[str, Any]) -> NamespaceSnapshot:
    """Record the namespace before the parameters cell (call it in the cell just before it)."""
    ann = ns.get("__annotations__", {}) or {}
    return NamespaceSnapshot(objects=dict(ns), annotations=frozenset(ann))


# --------------------------------------------------------------------------------------------- rules
Rule = Callable[[str, Any, Mapping[str, Any]], "str | None"]  # returns an error message or None


def _bound(value: Any, params: Mapping[str, Any]) -> tuple[Any, str]:
    if isinstance(value, str):
        return params[value], f"{value} (={params[value]!r})"
    return value, repr(value)


def between(lo: float | str | None = None, hi: float | str | None = None) -> Rule:
    """lo <= value <= hi; a bound given as a string is the value of that other parameter."""

    def rule(name: str, value: Any, params: Mapping[str, Any]) -> str | None:
        if lo is not None:
            b, text = _bound(lo, params)
            if value < b:
                return f"must be >= {text}"
        if hi is not None:
            b, text = _bound(hi, params)
            if value > b:
                return f"must be <= {text}"
        return None

    return rule


def one_of(*choices: Any) -> Rule:
    def rule(name: str, value: Any, params: Mapping[str, Any]) -> str | None:
        return None if value in choices else f"must be one of {list(choices)}"

    return rule


def satisfies(pred: Callable[[Any, Mapping[str, Any]], bool], text: str) -> Rule:
    """A free-form rule: ``pred(value, params)`` must hold; ``text`` says what it demands."""

    def rule(name: str, value: Any, params: Mapping[str, Any]) -> str | None:
        return None if pred(value, params) else text

    return rule


# --------------------------------------------------------------------------------------------- types
def _type_ok(value: Any, ann: Any) -> bool:
    if ann is Any or ann is typing.Any:
        return True
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return value in typing.get_args(ann)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in typing.get_args(ann))
    if ann is type(None) or ann is None:
        return value is None
    if origin is not None:  # list[int], dict[str, int]: check the container only
        return isinstance(value, origin)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(ann, type):
        return isinstance(value, ann)
    return True  # string annotations etc.: not checked


def _type_name(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def validate_params(
    declared: Mapping[str, Any],
    given: Mapping[str, Any],
    rules: Mapping[str, Rule | list[Rule]] | None = None,
    unknown: list[str] | tuple[str, ...] = (),
) -> SimpleNamespace:
    """Check ``given`` values against ``declared`` types and ``rules``; raise naming the parameter.

    declared: name -> type annotation; given: name -> value (every declared name must be present);
    unknown: names passed that the notebook does not declare.
    returns a namespace of the validated values (``P.seq_len``), also a mapping via ``vars(P)``.
    """
    if unknown:
        names = ", ".join(repr(u) for u in sorted(unknown))
        raise NotebookParameterError(
            f"unknown notebook parameter(s): {names}. This notebook declares: {', '.join(sorted(declared))}"
        )
    missing = [n for n in declared if n not in given]
    if missing:
        raise NotebookParameterError(f"notebook parameter(s) declared but never assigned: {missing}")
    values = {n: given[n] for n in declared}
    for name, ann in declared.items():
        if not _type_ok(values[name], ann):
            raise NotebookParameterError(
                f"parameter {name!r} must be of type {_type_name(ann)}, "
                f"got {type(values[name]).__name__} {values[name]!r}"
            )
        if ann is float and isinstance(values[name], int):
            values[name] = float(values[name])
    for name, rs in (rules or {}).items():
        if name not in declared:
            raise NotebookParameterError(f"a rule names parameter {name!r}, which the notebook does not declare")
        for rule in rs if isinstance(rs, list) else [rs]:
            msg = rule(name, values[name], values)
            if msg:
                raise NotebookParameterError(f"parameter {name!r} = {values[name]!r} is invalid: {msg}")
    return SimpleNamespace(**values)


def check_params(
    ns: Mapping[str, Any],
    before: NamespaceSnapshot,
    rules: Mapping[str, Rule | list[Rule]] | None = None,
) -> SimpleNamespace:
    """Validate the parameters of a running notebook (see the module docstring).

    ns: the notebook's ``globals()``; before: the snapshot taken just before the parameters cell.
    """
    ann = dict(ns.get("__annotations__", {}) or {})
    declared = ann  # every annotated module-level name: the parameters cell's declarations
    if not declared:
        raise NotebookParameterError(
            "no parameters declared: the parameters cell must use annotated assignments (name: type = value)"
        )
    unknown = []
    for name, value in ns.items():
        if name in declared or _IPYTHON_NAME.match(name) or isinstance(value, NamespaceSnapshot):
            continue
        if name not in before.objects or before.objects[name] is not value:
            unknown.append(name)
    return validate_params(declared, ns, rules, unknown)


__all__ = [
    "NamespaceSnapshot",
    "NotebookParameterError",
    "between",
    "check_params",
    "one_of",
    "satisfies",
    "snapshot_namespace",
    "validate_params",
]
