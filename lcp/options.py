"""Options declared once: a dataclass field carries its default, type, check, help and command-line spelling.

Every options dataclass of lcp (``cut.CutOptions``, ``training.RecoveryOptions``, ``methods.legr.SearchOptions``,
``run.config.PruneConfig``, ...) declares its fields with ``option(...)``. From that one declaration come:

- the command line (``add_arguments``): flag, type, choices, help with the default;
- recipes and the API (``from_mapping``): every value type-checked and range-checked, one-line ``LcpError``;
- the run signature (``signature``): the fields that identify a run's result.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lcp.errors import LcpError

Check = Callable[[Any], None]  # raises ValueError with a short reason


def option(
    default: Any,
    help: str | Callable[[], str],
    *,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    check: Check | None = None,
    flag: str | None = None,
    metavar: Any = None,
    signature: bool = True,
    cli: bool = True,
    group: str | None = None,
    repeat: bool = False,
) -> Any:
    """A dataclass field with its command-line and validation metadata.

    ``help`` and ``choices`` may be callables (read when the parser is built: registries fill late); ``check`` raises
    ``ValueError`` for a value of the right type but out of range; ``signature``: the field identifies the run's
    result (``signature``); ``flag``: the long option when it is not ``--name-with-dashes``; ``cli=False``: not
    on the command line (API and recipes only); ``repeat``: a list given by repeating the flag, one item each."""
    meta = {
        "help": help,
        "choices": choices,
        "check": check,
        "flag": flag,
        "metavar": metavar,
        "signature": signature,
        "cli": cli,
        "repeat": repeat,
        "group": group,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------------- checks


def unit_interval(value: float) -> None:
    """A budget: a fraction of the baseline cost in (0, 1]."""
    if not 0 < value <= 1:
        raise ValueError(f"must be in (0, 1] (the fraction of the baseline cost to keep: 0.5 keeps 50%), got {value}")


def fraction(value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {value}")


def at_least(low: float) -> Check:
    def check(value: float) -> None:
        if value < low:
            raise ValueError(f"must be at least {low:g}, got {value}")

    return check


def positive(value: float) -> None:
    if not value > 0:
        raise ValueError(f"must be positive, got {value}")


def or_auto(check: Check) -> Check:
    """``check`` for a number, or the word ``auto`` (the field is ``int | str``)."""

    def check_or_auto(value: Any) -> None:
        if isinstance(value, str):
            if value != "auto":
                raise ValueError(f"must be a whole number or auto, got {value!r}")
        else:
            check(value)

    return check_or_auto


def each(check: Check) -> Check:
    def check_all(values: Iterable[Any]) -> None:
        for v in values:
            check(v)

    return check_all


# ------------------------------------------------------------------------------------------------------- types


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); ``X`` -> (X, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _number_or_word(tp: Any) -> bool:
    """``int | str``: a whole number or a word such as ``auto``."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {int, str}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return "a list of " + {int: "whole numbers", float: "numbers", str: "strings"}.get(item, str(item))
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as ``tp`` (int -> float allowed; bool is never a number); raises TypeError."""
    base, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise TypeError("must be set")
    if typing.get_origin(base) is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"must be {_type_name(base)}")
        return [_coerce(v, typing.get_args(base)[0]) for v in value]
    if _number_or_word(base):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError("must be a whole number or a word")
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be a whole number")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("must be a finite number")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range (10**400)
            raise TypeError("must be a finite number") from None
        if not math.isfinite(number):
            raise TypeError("must be a finite number")
        return number
    if base is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    return value


def fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _choices(f: dataclasses.Field) -> Sequence[str] | None:
    c = f.metadata.get("choices")
    return c() if callable(c) else c


def validate(cls: type, name: str, value: Any) -> Any:
    """``value`` checked for field ``name`` of ``cls``: its type, its choices and its range (ValueError/TypeError)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = _coerce(value, _hints(cls)[name])
    if value is None:
        return value
    choices = _choices(f)
    if choices is not None and value not in choices:
        raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    if f.metadata.get("check"):
        f.metadata["check"](value)
    return value


def from_mapping(cls: type, values: Mapping[Any, Any], source: str) -> dict[str, Any]:
    """Validated keyword arguments of ``cls`` from a mapping (a recipe, API keywords); ``source`` names it in the
    one-line error."""
    known = {f.name for f in dataclasses.fields(cls)}
    bad_keys = [k for k in values if not isinstance(k, str)]
    if bad_keys:
        raise LcpError(f"{source}: option names must be strings, got {bad_keys[0]!r}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise LcpError(f"{source} has unknown options: {', '.join(unknown)}")
    out = {}
    for k, v in values.items():
        try:
            out[k] = validate(cls, k, v)
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: a check's arithmetic on a huge int
            raise LcpError(f"{source}: {k} {e}") from None
    return out


def signature(cfg: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``cfg`` that identify its result (``option(signature=True)``)."""
    skip = set(skip)
    return {f.name: getattr(cfg, f.name) for f in fields(type(cfg)) if f.metadata["signature"] and f.name not in skip}


def changed(options: Any, names: Iterable[str]) -> list[str]:
    """Those of ``names`` (fields of the dataclass instance ``options``) set away from their defaults."""
    own = {f.name: f for f in dataclasses.fields(options)}
    out = []
    for name in names:
        f = own.get(name)
        if f is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if getattr(options, name) != default:
            out.append(name)
    return out


def field_names(*classes: type) -> list[str]:
    return [f.name for cls in classes for f in fields(cls)]


def flag_of(f: dataclasses.Field) -> str:
    """The long option of field ``f`` on the command line (``option(flag=...)``, else ``--name-with-dashes``)."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


# ------------------------------------------------------------------------------------------------- command line


def text_parser(tp: Any, check: Check | None, label: str) -> Callable[[str], Any]:
    """argparse ``type=`` for a field of type ``tp``: convert, then ``check``; errors name the flag (``label``)."""
    base, _ = _split_optional(tp)

    def fail(reason: str) -> argparse.ArgumentTypeError:
        return argparse.ArgumentTypeError(f"{label} {reason}")

    if typing.get_origin(base) is list:  # comma-separated ("0.7,0.5")
        item = typing.get_args(base)[0]

        def parse_list(text: str) -> list:
            parts = [t for t in text.split(",") if t.strip()]
            if not parts:
                raise fail(f"must be {_type_name(base)} separated by commas, got '{text}'")
            values = [text_parser(item, None, label)(t) for t in parts]
            if check:
                try:
                    check(values)
                except ValueError as e:
                    raise fail(str(e)) from None
            return values

        return parse_list

    def parse(text: str) -> Any:
        try:
            if _number_or_word(base):
                value = int(text) if text.strip().lstrip("+-").isdigit() else text
            else:
                value = base(text) if base in (int, float) else text
        except ValueError:
            raise fail(f"must be {_type_name(base)}, got '{text}'") from None
        if check:
            try:
                check(value)
            except ValueError as e:
                raise fail(str(e)) from None
        if base is float and not math.isfinite(value):
            raise fail(f"must be a finite number, got '{text}'")
        return value

    return parse


def _checked_item(parse: Callable[[str], Any], check: Check, label: str) -> Callable[[str], Any]:
    """One item of a repeated flag, checked as a one-item list."""

    def parse_item(text: str) -> Any:
        value = parse(text)
        try:
            check([value])
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{label} {e}") from None
        return value

    return parse_item


def _default_text(f: dataclasses.Field) -> str:
    d = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if d is None or d is False or d == [] or isinstance(d, bool):
        return ""
    return f" (default {','.join(map(str, d)) if isinstance(d, list) else d})"


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = ()) -> None:
    """One ``--flag`` per field of ``cls`` (in declaration order; ``option(group=...)`` opens an argument group).
    Unset flags are absent from the parsed namespace (``SUPPRESS``), so recipes and the dataclass defaults fill
    them; ``%%`` in help is literal."""
    hints, exclude = _hints(cls), set(exclude)
    groups: dict[str | None, Any] = {None: parser}
    for f in fields(cls):
        m = f.metadata
        if not m["cli"] or f.name in exclude:
            continue
        group = m["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        target = groups[group]
        tp, _ = _split_optional(hints[f.name])
        flag = flag_of(f)
        help_text = (m["help"]() if callable(m["help"]) else m["help"]).replace("%", "%%")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        if tp is bool:
            on = f.default is True and not flag.startswith("--no-")  # on by default: --flag and --no-flag
            kw["action"] = (
                argparse.BooleanOptionalAction if on else "store_false" if flag.startswith("--no-") else "store_true"
            )
            target.add_argument(flag, help=help_text, **kw)
            continue
        choices = _choices(f)
        if typing.get_origin(tp) is list and m.get("repeat"):  # --flag A --flag B
            item = text_parser(typing.get_args(tp)[0], None, flag)
            if m["check"]:
                item = _checked_item(item, m["check"], flag)
            kw.update(action="append", type=item, metavar=m["metavar"] or "VALUE")
            target.add_argument(flag, help=help_text + " (repeatable)", **kw)
            continue
        if typing.get_origin(tp) is list and m["metavar"] and isinstance(m["metavar"], tuple):
            kw.update(nargs=len(m["metavar"]), metavar=m["metavar"], type=typing.get_args(tp)[0])
        else:
            kw["type"] = text_parser(tp, m["check"], flag)
            if choices is not None:
                kw["choices"] = list(choices)
            if m["metavar"]:
                kw["metavar"] = m["metavar"]
        target.add_argument(flag, help=help_text + _default_text(f), **kw)
