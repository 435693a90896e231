"""Typed option declarations: a settings dataclass field per config key, from which a `span`
command's flags, its parsed values and the workflow's `--flag value` words all follow.

Standard library only: the Snakefile imports it at parse time, with or without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import operator
import re
import shlex
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal


@dataclass(frozen=True)
class Option:
    """What a settings field declares besides its name, type and default."""

    help: str
    flag: str | None = ""  # "": --name-with-dashes; None: read by the workflow, no command flag
    ge: float | None = None  # bounds of a number: >=, >, <=, <
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    pattern: str | None = None  # a string value must match it
    min_length: int | None = None  # of a string value
    speed_only: bool = False  # changes speed, never results: editing it re-runs nothing


def option(default: Any, help: str, **declared: Any) -> Any:
    """A settings field: its default and what `Option` declares (help, flag, bounds...)."""
    meta = {"option": Option(help, **declared)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


#: The bound fields of `Option`: the comparison each asks for, and how an error names it.
_BOUNDS = (
    ("ge", operator.ge, ">="),
    ("gt", operator.gt, ">"),
    ("le", operator.le, "<="),
    ("lt", operator.lt, "<"),
)


@dataclass(frozen=True)
class Declared:
    """One option of a settings class, as the CLI, the workflow and the tests read it."""

    name: str
    kinds: tuple[type, ...]  # the types a value may have (int, float, bool, str, list, NoneType)
    consts: tuple[str, ...]  # the literal values it may have besides (Literal members)
    default: Any
    option: Option

    @property
    def flag(self) -> str | None:
        """The command's flag (None: the option is the workflow's only)."""
        if self.option.flag is None:
            return None
        return self.option.flag or "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        o = self.option
        if isinstance(value, int | float) and not isinstance(value, bool):
            for name, holds, word in _BOUNDS:
                bound = getattr(o, name)
                if bound is not None and not holds(value, bound):
                    return f"{value} is not {word} {bound:g}"
        if isinstance(value, str) and value not in self.consts:
            if o.pattern and not re.search(o.pattern, value):
                return f"{value!r} is not valid; use {o.help}"
            if o.min_length and len(value) < o.min_length:
                return f"{value!r} is shorter than {o.min_length}"
        return None


@functools.cache
def declared(settings: type) -> tuple[Declared, ...]:
    """The options of a settings class, in declaration order."""
    hints = typing.get_type_hints(settings)
    instance = settings()
    out = []
    for f in fields(settings):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        parts = typing.get_args(hint) if union else (hint,)
        literal = [p for p in parts if typing.get_origin(p) is Literal]
        kinds = tuple(typing.get_origin(p) or p for p in parts if p not in literal)
        consts = tuple(c for p in literal for c in typing.get_args(p))
        out.append(Declared(f.name, kinds, consts, getattr(instance, f.name), f.metadata["option"]))
    return tuple(out)


def _converter(d: Declared):
    """argparse `type` of an option: its literal values, else its number or string type, checked."""

    def convert(text: str) -> Any:
        value: Any = text if text in d.consts else None
        for kind in (int, float, str):
            if value is None and kind in d.kinds:
                with contextlib.suppress(ValueError):
                    value = kind(text)
        if value is None:
            names = [*map(repr, d.consts), *(k.__name__ for k in d.kinds if k is not type(None))]
            raise argparse.ArgumentTypeError(f"expected {' or '.join(names)}, got {text!r}")
        if problem := d.problem(value):
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def add_options(
    parser: argparse.ArgumentParser, settings: type, names: Collection[str] = ()
) -> None:
    """One flag per option of `settings` (or of those `names`) that its command takes."""
    for d in declared(settings):
        if d.flag is None or (names and d.name not in names):
            continue
        text = d.option.help.replace("%", "%%")
        text += "" if d.default is None else " (default: %(default)s)"
        kwargs: dict[str, Any] = {"dest": d.name, "default": d.default}
        if bool in d.kinds:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update({"type": _converter(d)} if d.kinds else {"choices": d.consts})
        parser.add_argument(d.flag, help=text, **kwargs)


def check_values(obj: Any, *settings: type) -> None:
    """The bounds, patterns and allowed values the settings classes declare, checked on the
    fields of `obj` of the same names (a stage's dataclass): the one place they are checked,
    for a command's flags and for the stage's code called directly alike."""
    for d in (d for s in settings for d in declared(s)):
        if not hasattr(obj, d.name):
            continue
        value = getattr(obj, d.name)
        if isinstance(value, str) and d.consts and value not in d.consts and str not in d.kinds:
            raise ValueError(f"{d.name}: {value!r} is not one of {list(d.consts)}")
        if value is not None and (problem := d.problem(value)):
            raise ValueError(f"{d.name}: {problem}")


def values_for(target: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options that a stage's dataclass `target` has fields of the same name for."""
    return {f.name: getattr(args, f.name) for f in fields(target) if hasattr(args, f.name)}


def cli_options(values: Mapping[str, Any], *settings: type, skip: Collection[str] = ()) -> str:
    """Config values -> `--flag value` words of the options these settings classes give their
    command, in the config's order (None = not passed; booleans as --flag / --no-flag). Keys
    they do not declare belong to other commands and are left out."""
    flags = {d.name: d.flag for s in settings for d in declared(s) if d.flag}
    words = []
    for key, value in values.items():
        flag = flags.get(key)
        if flag is None or key in skip or value is None:
            continue
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)
