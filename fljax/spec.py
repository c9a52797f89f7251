"""Component specs: a registered name with its keyword arguments, e.g. ``krum(num_byzantine=2)``.

One syntax for the runner's flags, the sweep's axes, the presets and the results JSON::

    spec   :=  name  |  name(arg=value, ...)
    chain  :=  spec+spec+...      components that act one after another, e.g. a pre-aggregation and
                                  the rule it feeds, 'bucketing(bucket_size=2)+krum'
    value  :=  a Python literal (2, 0.5, 'text', True, None, (1, 2)), or a bare word read as text
               (fang_trim(knowledge=partial)); true / false also read as booleans where one is due

``parse`` reads a chain; ``str(spec)`` writes the canonical form (the arguments in the order
given, values as Python literals), which is what the results record. ``coerce`` type-checks a
value against a factory parameter's annotation: the factory's signature stays the one place
where a default and a type live.
"""

from __future__ import annotations

import ast
import collections.abc
import math
import types
import typing
from typing import Any, NamedTuple, Sequence


class Spec(NamedTuple):
    """One component: a registry ``name`` and its keyword ``args`` as ``((name, value), ...)``."""

    name: str
    args: tuple = ()

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    def with_args(self, **kwargs) -> "Spec":
        """This spec with ``kwargs`` added (an argument given already is replaced in place)."""
        args = dict(self.args)
        args.update(kwargs)
        return Spec(self.name, tuple(args.items()))

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args)})"


def chain_text(specs: Sequence[Spec]) -> str:
    """The canonical text of a chain: its specs joined by ``+``."""
    return "+".join(str(s) for s in specs)


_SYNTAX = "name(arg=value, ...), several joined by '+'"


def parse(text: str, where: str = "spec") -> tuple[Spec, ...]:
    """The specs of ``text`` (one spec, or a chain joined by ``+``).

    Raises:
      ValueError: naming ``where`` (e.g. ``--aggregator``) and the text, when it is not a chain
        of ``name`` / ``name(arg=value, ...)`` with literal values.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where} must be a component spec, {_SYNTAX}; got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"{where}: cannot read {text!r}: expected {_SYNTAX}") from None
    terms = []

    def flatten(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            flatten(node.left)
            flatten(node.right)
        else:
            terms.append(node)

    flatten(tree)
    return tuple(_spec(node, text, where) for node in terms)


def _spec(node, text: str, where: str) -> Spec:
    if isinstance(node, ast.Name):
        return Spec(node.id)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"{where}: cannot read {text!r}: expected {_SYNTAX}")
    name = node.func.id
    if node.args or any(k.arg is None for k in node.keywords):
        raise ValueError(f"{where}: {name}(...) in {text!r} takes keyword arguments only, as {name}(arg=value)")
    args = []
    for keyword in node.keywords:
        if keyword.arg in dict(args):
            raise ValueError(f"{where}: {name}(...) in {text!r} gives {keyword.arg} twice")
        args.append((keyword.arg, _value(keyword.value, name, keyword.arg, text, where)))
    return Spec(name, tuple(args))


def _value(node, name: str, arg: str, text: str, where: str):
    if isinstance(node, ast.Name):  # a bare word: text (coerce turns true / false into booleans)
        return node.id
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise ValueError(
            f"{where}: {name}({arg}=...) in {text!r}: the value must be a literal (a number, "
            "'text', True / False, None or a tuple of them)"
        ) from None
    return tuple(value) if isinstance(value, list) else value


def split(text: str, where: str = "list") -> list[str]:
    """``text`` split at the commas outside parentheses, brackets and quotes (a comma list of
    specs, e.g. ``--aggregators='krum(num_byzantine=2),median'``); items stripped, empty ones dropped."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"{where}: unbalanced {'quote' if quote else 'parentheses'} in {text!r}")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


# ----------------------------------------------------------------------------- values


def is_literal_type(hint) -> bool:
    """Whether a spec can give a parameter of this annotation (numbers, text, booleans, None,
    sequences of them): the parameters ``--help`` lists. A parameter that takes a Python object
    (an optimizer, a loss function) is set in Python only."""
    if hint in (int, float, str, bool, type(None), typing.Any):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return all(is_literal_type(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        return all(is_literal_type(a) for a in args if a is not Ellipsis)
    return origin is typing.Literal


def type_text(hint) -> str:
    """``int`` -> "an integer", ``Optional[float]`` -> "a finite number or None", ..."""
    names = {
        int: "an integer",
        float: "a finite number",
        str: "a string",
        bool: "a boolean (true/false)",
        type(None): "None",
    }
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in sorted(args, key=lambda a: a is type(None)))
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a sequence of {type_text(args[0]).split(' ', 1)[-1]}s" if args else "a sequence"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    return getattr(hint, "__name__", str(hint))


_NO = object()


def _coerce(value, hint):
    """``value`` as ``hint`` (an int for a float becomes a float, ``'true'`` a bool, a list a
    tuple), or ``_NO``."""
    if hint is typing.Any:
        return value
    if hint is type(None):
        return None if value is None else _NO
    if hint is bool:
        if isinstance(value, bool):
            return value
        return {"true": True, "false": False}.get(value.lower(), _NO) if isinstance(value, str) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else _NO
    if hint is str:
        return value if isinstance(value, str) else _NO
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for a in sorted(args, key=lambda a: a is str):  # text last: '2' stays text only where no number fits
            out = _coerce(value, a)
            if out is not _NO:
                return out
        return _NO
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return _NO
        inner = args[0] if args else typing.Any
        out = tuple(_coerce(v, inner) for v in value)
        return _NO if any(v is _NO for v in out) else out
    if origin is typing.Literal:
        return value if value in args else _NO
    return _NO  # a Python object: never from a spec


def coerce(owner: str, name: str, value, hint) -> Any:
    """``value`` checked against the annotation ``hint`` of parameter ``name`` of ``owner``
    (an int where a float is due becomes a float; NaN and infinities are refused).

    Raises:
      ValueError: ``"<owner>: <name> must be an integer, got '2' (str)"``.
    """
    if not is_literal_type(hint):
        raise ValueError(
            f"{owner}: {name} takes a Python object ({type_text(hint)}), which a spec cannot give; set it in Python"
        )
    out = _coerce(value, hint)
    if out is _NO:
        raise ValueError(f"{owner}: {name} must be {type_text(hint)}, got {value!r} ({type(value).__name__})")
    return out
