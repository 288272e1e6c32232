"""The one exception type users see.

Recipes raise `TransferKitError` for anything the user can fix (a wrong column, a missing file, a bad option).
The message names the thing and the fix; the CLI prints it as one line, without a traceback, and exits non-zero.
"""

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

# `--debug` is TrainingArguments' own option (underflow/overflow detection), so the traceback switch has its own name.
DEBUG_FLAGS = ("--debug_errors", "--debug-errors")
DEBUG_HINT = "(--debug_errors true or TRANSFERKIT_DEBUG=1 shows the traceback)"
TRUE_VALUES = ("true", "1", "yes", "y", "t")


class TransferKitError(ValueError):
    """A problem with the user's input, raised before training starts, with a message that says how to fix it."""


@contextmanager
def as_user_error(prefix: str, kinds: tuple[type[Exception], ...] = (ValueError,)) -> Iterator[None]:
    """A library's own check (a dataclass's `__post_init__`, mostly) failing inside the block becomes one
    TransferKitError line that starts with `prefix`: the user sees which config or step it was, not a traceback."""
    try:
        yield
    except TransferKitError:
        raise
    except kinds as err:
        raise user_error(prefix, err) from None


def user_error(prefix: str, err: Exception) -> TransferKitError:
    """`err`'s text as one TransferKitError line after `prefix`."""
    return TransferKitError(f"{prefix}: {' '.join(str(err).split())}")


def exit_on_user_error(main: Callable[[], object], argv: Sequence[str] | None = None) -> None:
    """Run a CLI entry point; a TransferKitError becomes one line on stderr and exit status 2.

    Tracebacks are for bugs, not for a misspelt column: `--debug_errors true` (on the command line or in the
    --config YAML) or TRANSFERKIT_DEBUG=1 shows one.
    """
    try:
        main()
    except TransferKitError as err:
        if debug_requested(sys.argv[1:] if argv is None else list(argv)):
            raise
        message = " ".join(str(err).split())  # one line, even when a library's text inside it spans several
        print(f"error: {message} {DEBUG_HINT}", file=sys.stderr)
        sys.exit(2)


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether the user asked for tracebacks: read from argv as argparse would (the last value wins), else the
    config file. Done by hand, because the error may be that the arguments or the config do not parse."""
    if os.environ.get("TRANSFERKIT_DEBUG") == "1":
        return True
    requested = None
    for index, arg in enumerate(argv):
        flag, has_value, value = arg.partition("=")
        if flag in DEBUG_FLAGS:
            following = argv[index + 1] if index + 1 < len(argv) else ""
            if not has_value:
                value = following if following and not following.startswith("-") else "true"
            requested = value.lower() in TRUE_VALUES
    return _debug_in_config(argv) if requested is None else requested


def _debug_in_config(argv: Sequence[str]) -> bool:
    import yaml

    paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    paths += [arg.partition("=")[2] for arg in argv if arg.startswith("--config=")]
    try:
        with open(paths[-1], encoding="utf-8") as handle:
            return yaml.safe_load(handle).get("debug_errors") is True
    except Exception:  # no config, or one that does not parse (maybe the very error being reported)
        return False
