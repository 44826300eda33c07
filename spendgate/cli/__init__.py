"""The `spendgate` command. Each command group lives in its own module with a `register()`.

Start-up is lazy: `COMMANDS` names the module that registers each top-level command, so
`spendgate spend ...` imports only spendgate.cli.spend (and what it needs), and `spendgate --help`
imports none of them: the listing comes from the table. tests/unit/test_cli_lazy.py checks the
table against what the modules register, so a new command cannot be forgotten here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Modules under spendgate.cli that add commands; each has register(subparsers).
COMMAND_MODULES = ("spend", "budget_cmds", "live", "prices", "approval_cmds", "reconcile_cmds", "deploy_cmds",
                   "token_cmds", "store_cmds", "central_cmds")

# top-level command -> (module that registers it, its help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "ledger": ("spend", "the latest metered requests, newest first"),
    "spend": ("spend", "spend grouped by user, key, model, provider, client or workspace"),
    "policy": ("budget_cmds", "work with policy files"),
    "fingerprint": ("budget_cmds", "read an API key from stdin, print its fingerprint (never pass keys as arguments)"),
    "budgets": ("budget_cmds", "every active budget: limit, spent, reserved, remaining, reset"),
    "top": ("live", "live view of spend: totals, breakdowns, budgets near their cap, latest requests"),
    "export": ("live", "ledger rows as Parquet or CSV for finance (through the gateway if it runs)"),
    "dashboard": ("live", "print (or open) the running gateway's dashboard URL, signed in as admin"),
    "prices": ("prices", "the price catalogue, overrides, audits and re-pricing"),
    "explain": ("prices", "how the cost of one request was calculated, line by line"),
    "request": ("approval_cmds", "ask for more budget: recorded, sent to approvers, audited"),
    "approve": ("approval_cmds", "approve a pending request: the grant applies at once"),
    "deny": ("approval_cmds", "deny a pending request (the requester is told why)"),
    "requests": ("approval_cmds", "budget-increase requests and their decisions"),
    "audit": ("approval_cmds", "the append-only audit trail: requests, decisions, grants, alerts, policy loads"),
    "reconcile": ("reconcile_cmds", "compare metered spend with provider billing; seat plans; opaque clients"),
    "mdm": ("deploy_cmds", "render the MDM kit (PAC, profiles, scripts, agent settings)"),
    "addon": ("deploy_cmds", 'print the path of the mitmproxy addon: mitmdump -s "$(spendgate addon)"'),
    "ca": ("deploy_cmds", "the gateway's certificate authority"),
    "doctor": ("deploy_cmds", "check this machine against what the MDM kit promised (or, without a kit, the gateway "
               "HTTPS_PROXY names); exit 0 ok, 1 a check failed, 2 bad usage"),
    "tokens": ("token_cmds", "per-user tokens: proxy credentials and approvers' credentials"),
    "store": ("store_cmds", "the PostgreSQL store shared by gateway replicas: migrate, status"),
    "outbox": ("central_cmds", "a laptop's rows not yet acknowledged by the centre, and those it rejected"),
    "laptops": ("central_cmds", "a centre's laptops: last contact and push, and which went silent"),
}  # fmt: skip


def _command_in(argv: list[str]) -> str | None:
    """The top-level command word in `argv` (the first argument not starting with '-')."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given `argv`, only the module of its command is imported (the rest are listed)."""
    parser = argparse.ArgumentParser(prog="spendgate", description="Meter, price and cap AI coding-agent spend.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if argv is None:
        modules: tuple[str, ...] = COMMAND_MODULES
    else:
        wanted = COMMANDS.get(_command_in(argv) or "")
        modules = (wanted[0],) if wanted else ()
    for name in modules:
        importlib.import_module(f"spendgate.cli.{name}").register(sub)
    for name, (_, helptext) in COMMANDS.items():  # listed for --help, never run (its module was not asked for)
        if name not in sub.choices:
            sub.add_parser(name, help=helptext)
    # keep the listing in the table's order whichever module registered first
    order = list(COMMANDS)
    sub._choices_actions.sort(key=lambda a: order.index(a.dest) if a.dest in order else len(order))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                            format="%(levelname)s %(message)s")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`spendgate ledger | head`): stop quietly, as `cat` does, and keep
        # Python's flush at exit from printing a second traceback (the os-level stdout is closed)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left
    except Exception as e:
        from spendgate.cli.source import SourceError  # here: not imported for --help (<= 200 ms)

        if not isinstance(e, SourceError):
            raise
        print(f"spendgate: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
