"""click options built from config dataclass fields, so every default has one source: the dataclass.

Public: field_option(cls, name, *decls, ...), setting_option(key, *decls, ...), given_values(params),
config_file_values(ctx, path), AUTO_OR_INT (a click type: "auto" or an integer).

An option takes its type (int, float, text, flag, choice, repeatable) from the field's annotation and
shows the field's default in its help; its click default is None, so a value that is not None was
given. Ranges are checked by the dataclass on creation, the one place they are written. A --config
file's values are converted by the option of the same name, exactly as if given on the command line.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

import click

from skd.core.config import FLAT_KEYS, SECTIONS

_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


class AutoOrInt(click.ParamType):
    """The word "auto" or an integer (e.g. --gamma); ranges are the dataclass's to check."""

    name = "auto|INTEGER"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            return int(text)
        except ValueError:
            self.fail(f"{value!r} is neither auto nor an integer", param, ctx)


AUTO_OR_INT = AutoOrInt()


def _field(cls, name: str) -> tuple[Any, Any]:
    """(default, type without None) of dataclass field `name`."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not tuple and len(args) == 1:  # X | None
        hint = args[0]
    return default, hint


def _default_text(default: Any, secondary: str | None) -> str | None:
    if isinstance(default, bool):  # a plain flag off by default shows nothing, as click does
        return (secondary if not default else None) if secondary else None
    if default is None or default == ():
        return None
    return str(default)


def field_option(cls, name: str, *decls: str, help: str | None = None, dest: str | None = None,
                 choices: tuple[str, ...] | None = None, type: Any = None, default_text: str | None = None,
                 show_default: bool = True, **kw):
    """A click option for field `name` of dataclass `cls`: type from its annotation, default shown in help.

    decls: the option's names ("--x" or "--x/--no-x" for a flag); default "--<name>". dest: the
    parameter name (default `name`). default_text replaces the shown default; show_default=False
    shows none (the help then says what happens).
    """
    default, hint = _field(cls, name)
    decls = decls or (f"--{name.replace('_', '-')}",)
    secondary = decls[0].split("/", 1)[1].lstrip("-") if "/" in decls[0] else None
    if hint is bool:
        kw.setdefault("is_flag", True)
    elif typing.get_origin(hint) is tuple:  # tuple[str, ...]: a repeatable option
        kw.setdefault("multiple", True)
        type = type or click.STRING
    else:
        type = type or (click.Choice(choices) if choices else _TYPES[hint])
    shown = default_text if default_text is not None else _default_text(default, secondary)
    if show_default and shown:
        help = f"{help}  [default: {shown}]" if help else f"[default: {shown}]"
    return click.option(*decls, dest or name, type=type, default=None, help=help, **kw)


def setting_option(key: str, *decls: str, **kw):
    """field_option for run setting `key` (a flat name of skd.core.config.FLAT_KEYS)."""
    section, name = FLAT_KEYS[key]
    return field_option(SECTIONS[section], name, *(decls or (f"--{key.replace('_', '-')}",)), dest=key, **kw)


def given_values(params: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line: those not None (or, repeatable, not empty)."""
    return {k: v for k, v in params.items() if k != "config_file" and v is not None and v != ()}


def _as_text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        raise ValueError(f"expected a single value, got a {'mapping' if isinstance(value, dict) else 'list'}")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def config_file_values(ctx: click.Context, path: str | None):
    """The settings of --config `path` (None: no file), each converted by this command's option."""
    if path is None:
        return None
    from skd.core.run_options import read_config_file

    params = {p.name: p for p in ctx.command.params if isinstance(p, click.Option) and p.name != "config_file"}

    def cast(name: str, value: Any) -> Any:
        param = params[name]
        text = [_as_text(v) for v in (value if isinstance(value, list) else [value])] if param.multiple \
            else _as_text(value)
        try:
            return param.type_cast_value(ctx, text)
        except click.BadParameter as e:
            raise ValueError(e.message.rstrip(".")) from e

    return read_config_file(path, allowed=set(params) - {"help"}, cast=cast)
