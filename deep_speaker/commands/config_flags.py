"""Command-line flags made from `Config`'s fields, and a Config made back from them.

Each setting is declared once, in deep_speaker/config.py (`setting`: default, help,
bounds, choices); `add_config_flags` turns a list of field names into flags:

- int and float fields take a number, checked against the field's bounds by the
  flag's type, so `--lr 0` is the one-line usage error
  `argument --lr: '0' must lie in 1e-12..1e+06`;
- str fields with choices get `choices=`; bool fields are switches `--x` / `--no_x`;
- list fields (the speed factors) take comma-separated numbers, each within bounds.

A flag's parser default is None, so what the command line gave is known
(`config_from_args` applies only those over a base config: Config's defaults, or
those of a `--config FILE`); `--help` shows Config's default. Only the standard
library and deep_speaker.config are imported: `--help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

from deep_speaker.commands.common import checked_config
from deep_speaker.config import (_CHOICES, _ITEM_RANGES, _RANGES, BOOKKEEPING_FIELDS, DATA_FIELDS, LEGACY_V1_DEFAULTS,
                                 Config, ConfigError, read_config_object)

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_DEFAULTS = Config()


def add_config_flags(container, names: Iterable[str], *, flag_names: Mapping[str, str] | None = None,
                     helps: Mapping[str, str] | None = None,
                     metavars: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Add a `--<field>` flag for each Config field in `names` to `container` (a
    parser or an argument group); returns the names, for `config_from_args`.
    Each flag stores into `args.<field>`; `flag_names` spells some flags otherwise
    (preprocess.py's `--speed_perturb` for `speed_perturbations`), `helps` replaces
    a field's help text for one command, `metavars` names a flag's value."""
    flag_names, helps, metavars = flag_names or {}, helps or {}, metavars or {}
    names = tuple(names)
    for name in names:
        if name not in _FIELDS:
            raise ValueError(f"not a Config field: {name!r}")
        default = getattr(_DEFAULTS, name)
        flag = "--" + flag_names.get(name, name)
        text = helps.get(name, _FIELDS[name].metadata["help"])
        if "(default" not in text:  # a help text that explains its default keeps it
            text = f"{text} (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": text.replace("%", "%%")}
        if isinstance(default, bool):
            kwargs["action"] = _Switch
        else:
            if name in _CHOICES:
                kwargs["choices"] = _CHOICES[name]
            elif name in _RANGES:
                kwargs["type"] = _bounded(type(default), *_RANGES[name])
            elif isinstance(default, list):
                kwargs["type"] = _comma_numbers(*_ITEM_RANGES[name])
            else:
                kwargs["type"] = type(default)
            if name in metavars or flag[2:] != name:
                kwargs["metavar"] = metavars.get(name, flag[2:].upper())
        action = container.add_argument(flag, **kwargs)
        action.config_field = name  # tests and tools find the derived flags by it
    return names


def config_from_args(args: argparse.Namespace, names: Iterable[str], base: Config | None = None) -> Config:
    """`base` (Config's defaults unless given) with the values of the flags of
    `names` that the command line gave, checked (`Config.validate`; a bad value is
    a one-line CommandError)."""
    base = Config() if base is None else base
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return checked_config(base.override(**given))


def training_settings_from_file(path: str | Path) -> dict[str, Any]:
    """The training settings a JSON object of Config fields holds, for
    `train_cli.py --config FILE`: a recipe (e.g. scripts/recipes/*.json) or a
    checkpoint's own config.json, to train again with its settings.

    A checkpoint's config.json (it has `config_version` or `speakers`) also records
    the data settings of its inputs (`DATA_FIELDS`, decided by preprocess.py) and
    bookkeeping (`BOOKKEEPING_FIELDS`): those are skipped, and a version-1 file gets
    the values its code used for the fields it lacks (`LEGACY_V1_DEFAULTS`). In a
    recipe they are errors, as are unknown fields, wrong types and values out of
    bounds: a ConfigError naming the file."""
    path = Path(path)
    values = read_config_object(path)
    from_checkpoint = "config_version" in values or "speakers" in values
    if from_checkpoint and "config_version" not in values:  # version 1 (config.py's module docstring)
        values = {**LEGACY_V1_DEFAULTS, **values}
    settings = {}
    for name, value in values.items():
        if name in DATA_FIELDS or name in BOOKKEEPING_FIELDS:
            if from_checkpoint:
                continue
            why = ("is a data setting: preprocess.py decides it, training takes it from the training inputs"
                   if name in DATA_FIELDS else "is recorded by training, not a setting to train with")
            raise ConfigError(f"{path}: config field {name!r} {why}")
        settings[name] = value
    try:
        Config().override(**settings).validate()
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    return settings


class _Switch(argparse.Action):
    """A bool setting: `--x` turns it on, `--no_x` off (over a --config file's value)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        strings = [s for option in option_strings for s in (option, "--no_" + option[2:])]
        super().__init__(strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no_"))

    def format_usage(self):
        return " | ".join(self.option_strings)


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return ",".join(map(str, default)) or "none"
    return str(default)


def _span(low, high) -> str:
    return f"{low}..{high}" if isinstance(low, int) and isinstance(high, int) else f"{low:g}..{high:g}"


def _number(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None


def _bounded(kind: type, low, high):
    """The type of a number flag: `kind(text)` within low..high (NaN never is)."""
    def parse(text: str):
        value = _number(kind, text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must lie in {_span(low, high)}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _comma_numbers(low, high):
    """The type of a list flag: '0.9,1.1' -> [0.9, 1.1], each within low..high."""
    def parse(text: str) -> list[float]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected comma-separated numbers, e.g. 0.9,1.1")
        values = [_number(float, item) for item in items]
        for item, value in zip(items, values):
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"{item!r} must lie in {_span(low, high)}")
        return values
    parse.__name__ = "list"
    return parse
