"""Config dataclasses: a docstring per field, validation on construction, and the CLI.

A config is a plain (usually frozen) dataclass. The string literal written under
each field is its documentation; :func:`add_dataclass_args` turns the fields into
argparse options with that text as help, and :func:`from_args` builds the
dataclass back (running its ``__post_init__`` validation).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from typing import Any, TypeVar

from .errors import CodeclensError

C = TypeVar("C")


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a dataclass (inherited ones included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()) -> None:
    """Add one ``--field-name`` option per dataclass field, help from its docstring."""
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if not required:
            help_text += f" (default: {str(default).replace('%', '%%')})"
        kw: dict[str, Any] = dict(dest=f.name, help=help_text, required=required)
        if not required:
            kw["default"] = argparse.SUPPRESS
        if tp is bool:
            kw.pop("required")
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        origin = typing.get_origin(tp)
        if origin in (tuple, list):
            (inner, *_) = typing.get_args(tp) or (str,)
            kw["type"] = _csv_parser(inner)
            kw["metavar"] = "A,B,..."
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = str
        parser.add_argument(flag, **kw)


def _csv_parser(inner: Any):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(inner(t) for t in items)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def from_args(cls: type[C], args: argparse.Namespace, **extra: Any) -> C:
    """Build ``cls`` from parsed args (only fields present), plus ``extra``."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    kwargs.update(extra)
    return build(cls, kwargs)


def build(cls: type[C], values: dict[str, Any], where: str = "") -> C:
    """Build a config from a mapping (CLI or TOML), with clear errors for unknown keys."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CodeclensError(
            f"{where or cls.__name__}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    hints = _hints(cls)
    coerced = {}
    for k, v in values.items():
        tp, _ = _base_type(hints[k])
        if typing.get_origin(tp) in (tuple, list) and isinstance(v, (list, str)):
            if isinstance(v, str):
                v = [t.strip() for t in v.split(",") if t.strip()]
            # "1,2" from a TOML string must give (1, 2) for tuple[int, ...], as on the CLI.
            inner = (typing.get_args(tp) or (str,))[0]
            if inner in (int, float):
                try:
                    v = [inner(t) if isinstance(t, str) else t for t in v]
                except ValueError as e:
                    raise CodeclensError(f"{where or cls.__name__}: {k}: {e}") from None
            v = tuple(v)
        coerced[k] = v
        _refuse_nan(k, v, tp, where or cls.__name__)
        # Options named n_* are counts (resamples, shuffles, utterances): none means anything below 0.
        if k.startswith("n_") and tp is int and isinstance(v, int) and v < 0:
            raise CodeclensError(f"{where or cls.__name__}: {k} must be >= 0 (got {v})")
    try:
        return cls(**coerced)
    except (TypeError, ValueError) as e:
        raise CodeclensError(f"{where or cls.__name__}: {e}") from None


def _refuse_nan(name: str, value: Any, tp: Any, where: str) -> None:
    """NaN passes every ``x > 0`` style check by comparing false both ways: no float option
    means anything with it, so refuse it here for every config at once."""
    if typing.get_origin(tp) in (tuple, list):
        values = value if isinstance(value, (tuple, list)) else [value]
    else:
        values = [value]
    if any(isinstance(x, float) and math.isnan(x) for x in values):
        raise CodeclensError(f"{where}: {name} must be a number, not nan")


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-able dict of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
