"""Command-line plumbing shared by every command (``python -m dsa <command>``, see :mod:`dsa.commands`).

- :func:`add_dataclass_flags`: one flag per field of a config dataclass, its help, choices and metavar read
  from the field's metadata (``field(default=..., metadata={"help": "...", "choices": (...)})``), so a new
  config field with metadata is a new flag with nothing else to change;
- :func:`parse_args`: ``--config FILE`` (YAML or JSON, keys = field or flag names) under the command-line
  flags, unknown keys an error naming the key;
- :func:`usage_errors`: a ValueError/TypeError/FileNotFoundError raised while the values are checked becomes
  ``error: ...`` on stderr and exit status 2 (argparse's ``parser.error``), never a traceback;
- :func:`config_command_parser` and :func:`checked_config`: the whole parser of a command whose flags are one
  config dataclass's fields plus ``--out``, and its checked config (the benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _base_type(hint: Any) -> tuple[type, bool]:
    """(element type, is_list) of a field's type hint, ``X | None`` read as X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot make a flag of the type {hint}")
        hint = args[0]
    if typing.get_origin(hint) in (list, tuple):
        return typing.get_args(hint)[0], True
    return hint, False


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _help(f: dataclasses.Field, default: Any) -> str:
    text = f.metadata.get("help")
    if not text:
        raise ValueError(f"config field {f.name!r} has no help text in its metadata")
    if default is None or default == [] or isinstance(default, bool):
        return text
    return f"{text} (default: %(default)s)"


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of the dataclass ``cls`` (``seq_len`` -> ``--seq-len``), typed from its hint:
    bools as ``--x/--no-x``, lists as ``nargs='+'``; help, choices and metavar from the field metadata
    (a field without help is a ValueError: every flag is documented). A field with ``metadata["cli"] = False``
    is not a flag (set by code, e.g. ``TrainConfig.design``: an experiment's design factors)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        typ, is_list = _base_type(hints[f.name])
        kw: dict[str, Any] = {"default": default, "help": _help(f, default)}
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = typ
            if is_list:
                kw["nargs"] = "+"
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            if "metavar" in f.metadata:
                kw["metavar"] = f.metadata["metavar"]
        group.add_argument(flag_name(f.name), **kw)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML or JSON file of option values (keys: field or flag names, e.g. seq_len or "
                             "seq-len); flags given on the command line override it")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (.yaml/.yml) or JSON file. ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: no such file: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # noqa: PLC0415

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 (any parse error is the user's file: said, not raised)
        raise ValueError(f"--config {path}: cannot parse it: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: must hold a mapping of option names to values, got {type(data).__name__}")
    return data


def _tokens(action: argparse.Action, value: Any) -> list[str]:
    """The command-line tokens that give ``action`` the value ``value`` (argparse then converts and checks it
    exactly as it does a typed flag)."""
    if not action.option_strings:  # a positional
        return [str(v) for v in (value if isinstance(value, list) else [value])]
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} takes true or false, got {value!r}")
        return [flag if value else "--no-" + flag[2:]]
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ValueError(f"{flag} takes true or false, got {value!r}")
        return [flag] if value != action.default else []
    if isinstance(value, list):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


def _apply_config(parser: argparse.ArgumentParser, path: str) -> None:
    """Set the parser's defaults from the file ``path``, each value checked by its flag's own type and
    choices; unknown keys are an error naming the key."""
    data = read_config_file(path)
    by_dest = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    tokens: list[str] = []
    nulls: dict[str, None] = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in by_dest:
            known = ", ".join(sorted(by_dest))
            raise ValueError(f"--config {path}: unknown key {key!r} (known: {known})")
        if value is None:
            nulls[dest] = None
        else:
            tokens += _tokens(by_dest[dest], value)
    parser.exit_on_error = False  # a bad value raises ArgumentError (naming its flag) instead of exiting
    try:
        file_ns = parser.parse_args(tokens)
    except argparse.ArgumentError as e:
        raise ValueError(f"--config {path}: {e}") from None
    finally:
        parser.exit_on_error = True
    parser.set_defaults(**{dest: getattr(file_ns, dest) for dest in
                           (str(k).lstrip("-").replace("-", "_") for k in data)}, **nulls)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config FILE`` (when the parser has it) read first, under the
    flags. Errors exit with status 2 and ``error: ...`` on stderr."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None and any(a.dest == "config" for a in parser._actions):
        with usage_errors(parser):
            _apply_config(parser, known.config)
    return parser.parse_args(argv)


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn a ValueError/TypeError (or FileNotFoundError: a named input file is not there) raised by the value
    checks in the block into ``parser.error`` (stderr
    ``<prog>: error: <message>``, exit status 2). Only wrap the checks, never the work: an error raised while
    working is a bug to see with its traceback."""
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.error(str(e))


def config_command_parser(config_cls: type, prog: str | None, description: str | None,
                          out_help: str) -> argparse.ArgumentParser:
    """``--config FILE``, one flag per field of ``config_cls`` and ``--out PATH`` (help ``out_help``)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_option(p)
    add_dataclass_flags(p, config_cls)
    p.add_argument("--out", default=None, metavar="PATH", help=out_help)
    return p


def checked_config(p: argparse.ArgumentParser, config_cls: type, argv: Sequence[str] | None) -> tuple[Any, dict]:
    """(the config built from the parsed flags, checked by its ``__post_init__``; the other options, ``--out``
    checked to name no folder); a bad value exits with status 2 before any work."""
    from dsa.checks import check_out_file  # noqa: PLC0415

    args = vars(parse_args(p, argv))
    args.pop("config", None)
    names = {f.name for f in dataclasses.fields(config_cls)}
    rest = {k: v for k, v in args.items() if k not in names}
    with usage_errors(p):
        check_out_file("--out", rest.get("out"))
        return config_cls(**{k: v for k, v in args.items() if k in names}), rest
