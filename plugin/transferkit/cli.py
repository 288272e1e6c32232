"""The `transferkit` command: run the quickstart, push a finished run, and (later) list, copy and validate recipes."""

from __future__ import annotations

import argparse
import sys

from transferkit.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "quickstart",
        help="Finetune all-MiniLM-L6-v2 on Rotten Tomatoes reviews, offline, and print the test metrics. "
        "Extra flags are passed to the classify recipe (e.g. --num_train_epochs 1).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = build_parser().parse_known_args(argv)
    if args.command == "quickstart":
        from transferkit.quickstart import run_quickstart

        return run_quickstart(extra)
    return 0


def entry_point() -> None:
    exit_on_user_error(lambda: sys.exit(main()))


if __name__ == "__main__":
    entry_point()
