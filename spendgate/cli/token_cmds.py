"""`spendgate tokens issue | list | revoke`: per-user spendgate tokens.

A token is a person's credential on a gateway: the password of their proxy URL
(`http://USER:TOKEN@gateway:8080`, with `--set spendgate_proxy_tokens=true`) and, for approvers,
what the CLI (`$SPENDGATE_TOKEN`) and the dashboard present to decide requests. It is shown once;
the state file next to the ledger (`<db>.tokens`, mode 0600) keeps only its SHA-256. Writing
that file is the admin's power: whoever can, can mint anyone's token (see docs/security.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta

from spendgate.cli.output import add_db_arg, add_json_arg, print_json, table
from spendgate.cli.source import default_db
from spendgate.tokens import TokenError, TokenStore, tokens_path

_DURATION = re.compile(r"^(\d+)\s*([hdw])$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokens", help="per-user tokens: proxy credentials and approvers' credentials")
    tsub = p.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    i = tsub.add_parser("issue", help="make a token for USER (shown once; only its hash is kept)")
    i.add_argument("user")
    i.add_argument("--expires", default=DEFAULT_EXPIRY,
                   help="when it stops working: ISO 8601 time or date, a duration (12h, 90d, 8w), or `never`; "
                        f"default: {DEFAULT_EXPIRY} (a proxy password and an approver's credential should not "
                        "outlive the person's role unnoticed)")
    add_db_arg(i)
    add_json_arg(i)
    i.set_defaults(func=cmd_issue)
    ls = tsub.add_parser("list", help="tokens and their status (never the tokens themselves)")
    ls.add_argument("user", nargs="?")
    add_db_arg(ls)
    add_json_arg(ls)
    ls.set_defaults(func=cmd_list)
    r = tsub.add_parser("revoke", help="revoke USER's tokens (or one, with --id); applies within a second")
    r.add_argument("user")
    r.add_argument("--id", help="revoke only this token (t-...)")
    add_db_arg(r)
    add_json_arg(r)
    r.set_defaults(func=cmd_revoke)


DEFAULT_EXPIRY = "180d"  # what mdm/README's examples always passed; `--expires never` says so on purpose


def parse_expiry(value: str | None, now: datetime) -> datetime | None:
    """ISO 8601 (a date means its midnight UTC) or a duration from now; TokenError when unreadable or past."""
    if not value or value.strip().lower() == "never":
        return None
    m = _DURATION.match(value.strip().lower())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        t = now + {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
    else:
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise TokenError(f"--expires {value!r}: not an ISO 8601 time or a duration such as 90d") from None
        t = t if t.tzinfo else t.replace(tzinfo=UTC)
    if t <= now:
        raise TokenError(f"--expires {value!r} is not in the future")
    return t


def _store(args: argparse.Namespace) -> TokenStore:
    return TokenStore(tokens_path(args.db or default_db()))


def cmd_issue(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        token, rec = store.issue(args.user, parse_expiry(args.expires, datetime.now(UTC)))
    except TokenError as e:
        print(f"spendgate: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json({**rec.public(), "token": token})
        return 0
    print(token)
    print(f"token {rec.id} for {rec.user}, expires {rec.expires or 'never'}. It is shown only this once: "
          f"give it to {rec.user} (proxy password, or $SPENDGATE_TOKEN for approvers). Stored hashed in "
          f"{store.path}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = _store(args).list(args.user)
    if args.json:
        print_json(rows)
    else:
        table("spendgate tokens", rows, ["id", "user", "status", "created", "expires", "revoked"])
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    done = _store(args).revoke(args.user, args.id)
    if args.json:
        print_json([r.public() for r in done])
    elif done:
        print(f"revoked {len(done)} token(s) of {args.user}: {', '.join(r.id for r in done)}")
    if not done:
        print(f"spendgate: {args.user} has no live token{' ' + args.id if args.id else ''}", file=sys.stderr)
        return 1
    return 0
