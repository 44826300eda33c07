"""The `spendgate` command. Each command group lives in its own module with a `register()`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from spendgate.cli.source import SourceError

# Modules under spendgate.cli that add commands; each has register(subparsers).
COMMAND_MODULES = ("spend", "budget_cmds", "live", "prices", "approval_cmds", "reconcile_cmds", "deploy_cmds",
                   "token_cmds", "store_cmds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendgate", description="Meter, price and cap AI coding-agent spend.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"spendgate.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except SourceError as e:
        print(f"spendgate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
