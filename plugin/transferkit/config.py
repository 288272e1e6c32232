"""YAML + command-line configuration with TRL's semantics: the file sets defaults, flags on the command line win.

Every recipe option and every `TrainingArguments` field is a key, under its own name. The YAML values are checked
against the same argparse actions the command line uses, so a typo or a wrong type is caught before anything is
loaded, with a message that names the key, the file and the fix.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from transferkit.distributed import cpu_process_group
from transferkit.errors import TransferKitError, as_user_error
from transferkit.example_scripts import not_taken_message
from transferkit.implied import COMMAND_LINE, settle
from transferkit.ranges import check_ranges, option_range

CONFIG_HELP = "YAML file whose keys set the defaults; flags given on the command line override them."


class RangedArgumentParser(HfArgumentParser):
    """HfArgumentParser, where a field's `range` metadata (transferkit.ranges) goes into its help, not to argparse,
    which takes every other metadata key as an `add_argument` keyword."""

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        allowed = option_range(field)
        if allowed is not None:  # a field with `range` metadata always has one
            metadata = {key: value for key, value in field.metadata.items() if key != "range"}
            metadata["help"] = f"{metadata.get('help', '')} Range: {allowed}.".strip()
            field = copy.copy(field)
            field.metadata = types.MappingProxyType(metadata)
        HfArgumentParser._parse_dataclass_field(parser, field)


def build_parser(dataclass_types: Sequence[type], description: str | None = None) -> HfArgumentParser:
    """An HfArgumentParser over the recipe's dataclasses, plus `--config`."""
    # No abbreviations: `--token` would otherwise be taken for `--tokenizer_name` (or be ambiguous), so an example
    # script's option would never reach its own message (transferkit.example_scripts).
    parser = RangedArgumentParser(
        list(dataclass_types),
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help=CONFIG_HELP)
    # HfArgumentParser reads TrainingArguments' `include_num_input_tokens_seen: str | bool` as a boolean only, so
    # `non_padding`, one of its documented values, would be refused: it takes its words as well.
    for action in parser._actions:
        if action.dest == "include_num_input_tokens_seen":
            action.type, action.choices = token_counting, None
    return parser


TOKEN_COUNTING = ("all", "non_padding", "no")


def token_counting(value: str | bool) -> str | bool:
    """`include_num_input_tokens_seen`: all, non_padding or no, or a boolean (true counts all)."""
    if isinstance(value, bool) or value in TOKEN_COUNTING:
        return value
    try:
        return string_to_bool(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(TOKEN_COUNTING)}, true or false") from None


def parse_config(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    description: str | None = None,
    refused: dict[str, str] | None = None,
    config_label: str | None = None,
) -> tuple:
    """Parse `argv` (default: sys.argv) into one instance per dataclass.

    `refused`: options of the dataclasses that this recipe does not use, with why (set by the user: an error).
    `config_label`: how messages name the `--config` file (a pipeline's section, not its scratch file).

    Precedence, lowest first: the dataclass defaults, the recipe's `defaults`, the `--config` YAML file, the
    command line. Then what the user's options imply is settled (`transferkit.implied`: `save_steps` alone means
    `save_strategy: steps`) and every numeric value is checked against its range (`transferkit.ranges`), all before
    anything is loaded.
    """
    values, _ = parse_values(dataclass_types, argv, defaults, description, refused, config_label)
    return tuple(_build(dtype, values) for dtype in dataclass_types)


def parse_values(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    description: str | None = None,
    refused: dict[str, str] | None = None,
    config_label: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """parse_config short of building the dataclasses: every option's settled, checked value, and where the user
    set each of theirs (the YAML file or "command line")."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(dataclass_types, description)
    if defaults:
        _apply_defaults(parser, _coerce_mapping(parser, defaults, source="recipe defaults"))
    where: dict[str, str] = {}  # each option the user set -> where: the YAML file or the command line
    config_path = config_file(argv)
    if config_path is not None:
        from_file = load_yaml_config(parser, config_path, label=config_label)
        _apply_defaults(parser, from_file)
        where.update(dict.fromkeys(from_file, config_label or config_path))
    namespace, remaining = parser.parse_known_args(argv)  # --help prints and exits here
    if remaining:
        raise TransferKitError(_unknown_flags_message(parser, remaining))
    where.update(dict.fromkeys(parse_overrides(dataclass_types, argv), COMMAND_LINE))
    return settle_and_check(dataclass_types, vars(namespace), where, refused), where


def settle_and_check(
    dataclass_types: Sequence[type], values: dict[str, Any], where: dict[str, str], refused: dict[str, str] | None
) -> dict[str, Any]:
    """What the user's options imply (transferkit.implied), the recipe's refusals, then every value's range."""
    for key, why in (refused or {}).items():
        if key in where and values.get(key) not in (None, False):
            raise TransferKitError(f"{key} ({where[key]}): {why}")
    values = settle(values, where)
    check_ranges(dataclass_types, values, where)
    return values


def _build(dtype: type, values: dict[str, Any]) -> Any:
    """One dataclass from the parsed values (as HfArgumentParser does); its own checks' ValueError is one line."""
    names = {field.name for field in dataclasses.fields(dtype) if field.init}
    with as_user_error(dtype.__name__):
        if issubclass(dtype, TrainingArguments):  # building it starts a launch's process group; on CPU: with
            cpu_process_group(values)  # ddp_timeout (transferkit.distributed)
        return dtype(**{key: value for key, value in values.items() if key in names})


def parse_overrides(dataclass_types: Sequence[type], argv: Sequence[str], source: str = "command line") -> dict:
    """Only the options `argv` gives, typed by the recipe's own parser (`--k v`, `--k=v`, bare booleans, lists)."""
    parser = build_parser(dataclass_types)
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    namespace, remaining = parser.parse_known_args(list(argv))
    if remaining:
        raise TransferKitError(_unknown_flags_message(parser, remaining, source))
    return {key: value for key, value in vars(namespace).items() if key != "config"}


def load_yaml_config(parser: HfArgumentParser, path: str, label: str | None = None) -> dict[str, Any]:
    """Read a YAML config and check every key and value against the parser's options."""
    if not os.path.isfile(path):
        raise TransferKitError(f"Config file not found: {path}. Pass the path of an existing YAML file to --config.")
    with open(path, encoding="utf-8") as handle:
        try:
            content = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise TransferKitError(f"{path} is not valid YAML: {err}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise TransferKitError(f"{path} must hold a mapping of option: value, got a {type(content).__name__}.")
    return _coerce_mapping(parser, content, source=label or path)


def config_file(argv: list[str]) -> str | None:
    """The --config file of a command line, as parse_config reads it; recipes that rerun themselves with changed
    options (seeds, the search's retrain) read it too."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.config


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The option each config key maps to; `no_*` complements of booleans are not keys of their own."""
    actions = {}
    for action in parser._actions:
        if action.dest in ("help", "config") or isinstance(action, argparse._StoreFalseAction):
            continue
        actions[action.dest] = action
    return actions


def _coerce_mapping(parser: argparse.ArgumentParser, mapping: dict[str, Any], source: str) -> dict[str, Any]:
    actions = _actions_by_dest(parser)
    coerced = {}
    for key, value in mapping.items():
        if key not in actions:
            raise TransferKitError(_unknown_key_message(str(key), list(actions), source))
        coerced[key] = _coerce_value(key, value, actions[key], source)
    return coerced


def _coerce_value(key: str, value: Any, action: argparse.Action, source: str) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        if action.nargs in ("+", "*") or action.type in (int, float, string_to_bool) or action.choices:
            raise TransferKitError(f"{source}: '{key}' expects {_describe(action)}, got a mapping {value!r}.")
        return value  # dict-valued TrainingArguments fields (fsdp_config, lr_scheduler_kwargs, ...) take dicts
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_coerce_scalar(key, item, action, source) for item in items]
    if isinstance(value, list):
        raise TransferKitError(f"{source}: '{key}' takes a single value, got the list {value!r}.")
    return _coerce_scalar(key, value, action, source)


def _coerce_scalar(key: str, value: Any, action: argparse.Action, source: str) -> Any:
    expected = action.type
    ok = True
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is string_to_bool:
        ok = isinstance(value, bool)
    elif expected is token_counting:
        ok = isinstance(value, bool) or value in TOKEN_COUNTING
    elif expected is str or expected is None:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
        ok = ok and (action.choices is None or value in action.choices)
    elif action.choices is not None:
        ok = str(value) in {str(choice) for choice in action.choices}
        value = expected(str(value)) if ok else value
    if not ok:
        raise TransferKitError(
            f"{source}: '{key}' expects {_describe(action)}, got {value!r} ({type(value).__name__})."
        )
    return value


def _describe(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(repr(str(choice)) for choice in action.choices)
    names = {int: "an integer", float: "a number", string_to_bool: "true or false", str: "a string",
             token_counting: "one of all, non_padding, no, true or false"}  # fmt: skip
    described = names.get(action.type, getattr(action.type, "__name__", "a value"))
    return f"a list of {described.removeprefix('an ').removeprefix('a ')}s" if action.nargs == "+" else described


def _apply_defaults(parser: argparse.ArgumentParser, values: dict[str, Any]) -> None:
    """Set defaults and relax `required`, since a value from a file satisfies a required option."""
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False


def _unknown_key_message(key: str, valid: list[str], source: str) -> str:
    if not_taken := not_taken_message(key, source):
        return not_taken
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else " Run the recipe with --help to list every option."
    return f"{source}: unknown key '{key}'.{hint}"


def _unknown_flags_message(parser: argparse.ArgumentParser, remaining: list[str], source: str = "command line") -> str:
    flags = [item for item in remaining if item.startswith("--")] or remaining
    key = flags[0].lstrip("-").split("=")[0].replace("-", "_")
    return _unknown_key_message(key, list(_actions_by_dest(parser)), source)
