"""`spendgate prices update|diff|check|reprice|show` and `spendgate explain REQUEST_ID`.

Prices are a reviewed input, not a constant: updates print what changed and write only with
--yes; re-pricing keeps the previous cost in an audit table; any cost can be explained line by
line from what its row stored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices.update_prices import DEFAULT_UPDATE_URL

from spendgate import resources
from spendgate.cli.output import (
    add_db_arg,
    add_json_arg,
    console,
    escaped,
    print_json,
    source,
    table,
)
from spendgate.cli.source import SourceError, default_db, open_source
from spendgate.metering import billing
from spendgate.money import usd
from spendgate.pricing import catalogue as pc
from spendgate.pricing import reprice
from spendgate.pricing.rates import (
    VARIANTS,
    Pricer,
    PricingError,
    compare_overrides,
    guess_provider,
)
from spendgate.store.ledger import LedgerLocked, connect, migrate
from spendgate.store.sql import parse_time
from spendgate.usage import Usage


def default_pricing_dir() -> Path:
    """SPENDGATE_PRICING_DIR, else pricing/ in the source checkout (what the gateway uses)."""
    if env := os.environ.get("SPENDGATE_PRICING_DIR"):
        return Path(env)
    return resources.pricing_dir()


def _add_pricing_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pricing-dir", type=Path, default=None,
                   help="folder with overrides.yaml and catalogue.json (default: pricing/ or $SPENDGATE_PRICING_DIR)")  # fmt: skip


def _pricing_dir(args: argparse.Namespace) -> Path:
    return args.pricing_dir or default_pricing_dir()


def _pricer(folder: Path) -> Pricer:
    overrides = folder / "overrides.yaml"
    try:
        return Pricer(overrides if overrides.exists() else None, catalogue_dir=folder)
    except PricingError as e:
        raise SourceError(f"invalid pricing files:\n{e}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prices", help="the price catalogue, overrides, audits and re-pricing")
    psub = p.add_subparsers(dest="prices_command", required=True, metavar="ACTION")

    for name, helptext in (
        ("update", "load a newer genai-prices catalogue, show what changed, pin it with --yes"),
        ("diff", "show what a catalogue would change against the pinned one (writes nothing)"),
    ):
        q = psub.add_parser(name, help=helptext)
        q.add_argument("--from", dest="source", default=DEFAULT_UPDATE_URL,
                       help="a file, an http(s) URL (genai-prices data format), or 'bundled' for the data inside "
                            "the installed genai-prices package (default: the upstream data.json)")  # fmt: skip
        if name == "update":
            q.add_argument("--yes", action="store_true", help="write the new catalogue (otherwise only show the diff)")
        _add_pricing_arg(q)
        add_json_arg(q)
        q.set_defaults(func=cmd_update if name == "update" else cmd_diff)

    q = psub.add_parser("check", help="unpriced models, fallback-charged rows, overrides that disagree with the catalogue")
    q.add_argument("--since", help="only ledger rows at or after this ISO 8601 time")
    q.add_argument("--strict", action="store_true", help="exit 1 when models lack a price or rows were charged a fallback")
    add_db_arg(q)
    _add_pricing_arg(q)
    add_json_arg(q)
    q.set_defaults(func=cmd_check)

    q = psub.add_parser("reprice", help="recompute costs from stored usage with the current prices")
    q.add_argument("--since", required=True, help="first request time to re-price (ISO 8601)")
    q.add_argument("--until", help="re-price requests before this time (ISO 8601)")
    q.add_argument("--dry-run", action="store_true", help="show the change per user and model, write nothing")
    add_db_arg(q)
    q.add_argument("--policy", type=Path, help="with --store: the policy whose budget counters move (default: "
                   "$SPENDGATE_POLICY or policies/default.yaml)")
    _add_pricing_arg(q)
    add_json_arg(q)
    q.set_defaults(func=cmd_reprice)

    q = psub.add_parser("slim", help="move price details stored on rows written before rate cards to cards "
                                     "(each row verified), then compact the ledger file (gateway stopped)")
    q.add_argument("--no-compact", action="store_true", help="convert only; do not rewrite the file")
    add_db_arg(q)
    _add_pricing_arg(q)
    add_json_arg(q)
    q.set_defaults(func=cmd_slim)

    q = psub.add_parser("show", help="the rates of one model on one day, with the source of each")
    q.add_argument("model")
    q.add_argument("--provider", choices=("anthropic", "openai", "gemini"), help="default: guessed from the name")
    q.add_argument("--at", help="date or time (default: now)")
    q.add_argument("--variant", choices=VARIANTS, default="standard")
    _add_pricing_arg(q)
    add_json_arg(q)
    q.set_defaults(func=cmd_show)

    p = sub.add_parser("explain", help="how the cost of one request was calculated, line by line")
    p.add_argument("request_id", help="a request id from `spendgate ledger` (a unique prefix works)")
    add_db_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_explain)


# --- update / diff ---------------------------------------------------------------------------


def _candidate(src: str) -> tuple[str, pc.Catalogue]:
    if src == "bundled":
        text = pc.dumps(pc.providers_to_raw(pc.bundled().providers))
        return pc.prepare(text, "bundled genai-prices data")
    try:
        text = pc.fetch(src)
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read {src}: {e}") from None
    try:
        return pc.prepare(text, src)
    except pc.CatalogueError as e:
        raise SourceError(str(e)) from None


def _pinned(folder: Path) -> pc.Catalogue:
    try:
        return pc.load(folder)
    except (pc.CatalogueError, OSError) as e:
        raise SourceError(f"the pinned catalogue is unreadable: {e}") from None


def _show_changes(changes: list[pc.Change], old: pc.Catalogue, new: pc.Catalogue) -> None:
    console.print(f"pinned:    {old.version}\ncandidate: {new.version}")
    if not changes:
        console.print("[green]No price changes[/] for the models spendgate meters.")
        return
    rows = [c.as_dict() for c in changes]
    table(f"{len(changes)} price changes (USD per MTok; web searches and requests per 1,000)", rows,
          ["provider", "model", "field", "old", "new", "effective"])  # fmt: skip


def cmd_diff(args: argparse.Namespace) -> int:
    folder = _pricing_dir(args)
    old = _pinned(folder)
    _, new = _candidate(args.source)
    changes = pc.diff(old, new)
    if args.json:
        print_json({"pinned": old.version, "candidate": new.version, "changes": [c.as_dict() for c in changes]})
    else:
        _show_changes(changes, old, new)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    folder = _pricing_dir(args)
    old = _pinned(folder)
    text, new = _candidate(args.source)
    changes = pc.diff(old, new)
    same_file = old.sha256 == new.sha256
    written = None
    if args.yes and not same_file:
        label = f"genai-prices {pc.genai_prices.__version__} (bundled package data)" if args.source == "bundled" else args.source
        written = pc.write(folder, text, label, old.version)
    if args.json:
        print_json({"pinned": old.version, "candidate": new.version, "changes": [c.as_dict() for c in changes],
                    "written": written})  # fmt: skip
        return 0
    _show_changes(changes, old, new)
    if same_file:
        console.print("The pinned catalogue is already this version; nothing to write.")
    elif written:
        console.print(f"[bold]Pinned[/] {written['version']} in {folder / pc.CATALOGUE_FILE} (lock: {pc.LOCK_FILE}).")
        console.print("New requests use it once the gateway reloads its prices (restart it, or run "
                      "`spendgate prices reprice --since ...`, which also switches it). Past rows keep their cost "
                      "until re-priced.")  # fmt: skip
    else:
        console.print("Nothing written: review the changes, then run again with [bold]--yes[/].")
    return 0


# --- check -----------------------------------------------------------------------------------


def _ledger_check(args: argparse.Namespace) -> dict[str, Any] | None:
    db = args.db or default_db()
    if not db.exists() and not (db.parent / (db.name + ".gateway.json")).exists():
        return None
    return source(args).query("price_check", since=args.since)


def cmd_check(args: argparse.Namespace) -> int:
    pricer = _pricer(_pricing_dir(args))
    overrides = compare_overrides(pricer)
    ledger = _ledger_check(args)
    result = {"price_version": pricer.version, "overrides": overrides,
              **(ledger or {"unpriced_models": [], "fallback_charged": [], "generic_rate_tokens": [],
                            "unknown_modifiers": []})}  # fmt: skip
    result.setdefault("generic_rate_tokens", [])  # a gateway from before price modifiers
    result.setdefault("unknown_modifiers", [])
    problems = (len(result["unpriced_models"]) + len(result["fallback_charged"])
                + len(result["generic_rate_tokens"]) + len(result["unknown_modifiers"]))
    if args.json:
        print_json(result)
        return 1 if args.strict and problems else 0
    console.print(f"prices: {pricer.version}")
    if ledger is None:
        console.print("(no ledger found: only the overrides were checked)")
    if result["unpriced_models"]:
        table("Models seen without a price (recorded as unpriced; add an override or update the catalogue)",
              result["unpriced_models"], ["provider", "model", "requests", "input_tokens", "output_tokens",
                                          "fallback_charged_usd", "first_seen", "last_seen"],
              money=["fallback_charged_usd"])  # fmt: skip
    elif ledger is not None:
        console.print("[green]Every model in the ledger has a price.[/]")
    if result["fallback_charged"]:
        table("Rows charged a fallback rate (budgets counted charged_usd; cost_usd is unknown)",
              result["fallback_charged"], ["provider", "model", "outcome", "requests", "charged_usd"],
              money=["charged_usd"])  # fmt: skip
    elif ledger is not None:
        console.print("[green]No rows were charged a fallback rate.[/]")
    if result["generic_rate_tokens"]:
        table("Tokens of a kind with no rate of its own, priced at the generic rate (add the kind's rate "
              "in an override, e.g. output_image_mtok)", result["generic_rate_tokens"],
              ["provider", "model", "kind", "rate_used", "requests", "tokens"])  # fmt: skip
    elif ledger is not None:
        console.print("[green]Every audio, image and video token had its own rate.[/]")
    if result["unknown_modifiers"]:
        table("Serving modifiers the provider reported with no known price effect (standard rates used)",
              result["unknown_modifiers"], ["provider", "model", "modifier", "value", "requests"])
    if overrides:
        table("Overrides against the catalogue", overrides,
              ["model", "variant", "effective_from", "field", "override", "catalogue", "status"])
    else:
        console.print("No overrides.")
    return 1 if args.strict and problems else 0


# --- reprice ---------------------------------------------------------------------------------


REPRICE_TABLE_ROWS = 50  # (user, model) rows the terminal table shows; rendering thousands took seconds


def cmd_reprice(args: argparse.Namespace) -> int:
    try:
        since = parse_time(args.since)
        until = parse_time(args.until) if args.until else None
    except ValueError as e:
        raise SourceError(f"not an ISO 8601 time: {e}") from None
    if getattr(args, "store", None):  # the ledger shared by replicas: rows, audit, counters in one transaction
        result, where = _reprice_store(args, since, until)
    else:
        result, where = _reprice_file(args, since, until)
    if args.json:
        print_json({**result, "where": where})
        return 0
    verb = "Would change" if args.dry_run else "Changed"
    console.print(f"prices: {result['price_version']} ({where})")
    console.print(f"{verb} {result['changed']:,} of {result['examined']:,} requests since {args.since}; "
                  f"budget charges move by ${result['delta_usd']:+,.6f}")  # fmt: skip
    if result["by_user_model"]:
        groups = result["by_user_model"]  # biggest change first; a year can hold thousands of them
        shown = groups[:REPRICE_TABLE_ROWS]
        table(f"Change per user and model ({len(shown)} of {len(groups):,}; --json for all)"
              if len(groups) > len(shown) else "Change per user and model", shown,
              ["user", "model", "requests", "old_usd", "new_usd", "delta_usd"],
              money=["old_usd", "new_usd", "delta_usd"])  # fmt: skip
    if result["run_id"]:
        console.print(f"Previous costs kept in price_audit (run {result['run_id']}).")
    if result.get("counters_moved") or result.get("skipped"):  # the shared store's budget counters
        console.print(f"Shared budget counters of current windows moved: {result['counters_moved']}; "
                      f"rows left alone because they changed meanwhile: {result['skipped']}.")
    return 0


def _reprice_file(args: argparse.Namespace, since: datetime, until: datetime | None) -> tuple[dict[str, Any], str]:
    db = args.db or default_db()
    if not db.exists():
        raise SourceError(f"no ledger at {db}")
    try:
        con = connect(db)
    except LedgerLocked:
        con = None
    if con is not None:  # nobody holds the file: re-price it here, with our pricing files
        try:
            migrate(con)
            return reprice.run(con, _pricer(_pricing_dir(args)), since, until, dry_run=args.dry_run), f"file {db}"
        finally:
            con.close()
    # a gateway holds it: it re-prices with its pricing files and moves its budget counters
    src = open_source(db)
    result = src.post("reprice", since=since.isoformat(), until=until.isoformat() if until else None,
                      dry_run=args.dry_run)  # fmt: skip
    return result, src.where


def _reprice_store(args: argparse.Namespace, since: datetime, until: datetime | None) -> tuple[dict[str, Any], str]:
    """Re-price the shared PostgreSQL store with our pricing files (spendgate.budgets.reprice_store).

    Replicas keep pricing new requests with the files they loaded: roll the same pricing files out
    to them (and restart) so new rows match what was re-priced."""
    from spendgate.budgets import reprice_store
    from spendgate.cli.source import default_policy
    from spendgate.policy.model import PolicyError, load
    from spendgate.store.pg_read import open_store
    from spendgate.store.postgres import StoreError, redact

    if not args.store.startswith(("postgresql://", "postgres://")):
        raise SourceError("--store takes a postgresql:// URL")
    policy = None
    if not args.dry_run:
        try:
            policy = load(args.policy or default_policy())
        except PolicyError as e:
            raise SourceError(f"invalid policy:\n{e}") from None
    pricer = _pricer(_pricing_dir(args))
    try:
        store = open_store(args.store)
        try:
            store.check_schema()
            return (reprice_store.run(store, pricer, since, until, dry_run=args.dry_run, policy=policy),
                    f"store {redact(args.store)}")
        finally:
            store.close()
    except StoreError as e:
        raise SourceError(str(e)) from None


# --- slim ------------------------------------------------------------------------------------


def cmd_slim(args: argparse.Namespace) -> int:
    from spendgate.pricing import slim

    db = args.db or default_db()
    if not db.exists():
        raise SourceError(f"no ledger at {db}")
    try:
        con = connect(db)
    except LedgerLocked:
        raise SourceError(f"{db} is held by a running gateway: stop it, then run `spendgate prices slim` "
                          "(the file is rewritten)") from None
    try:
        migrate(con)

        def progress(r: slim.SlimReport) -> None:
            if not args.json and sys.stderr.isatty():
                print(f"\r  {r.rows:,} rows: {r.converted:,} converted, {r.kept:,} kept", end="", file=sys.stderr)

        report = slim.convert(con, _pricer(_pricing_dir(args)), progress)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    out = {"db": str(db), **report.as_dict()}
    if not args.no_compact:
        before, after = slim.compact(db)
        out.update(bytes_before=before, bytes_after=after)
    if args.json:
        print_json(out)
        return 0
    print(f"{db}: {report.converted:,} of {report.rows:,} rows now point at a rate card ({report.cards:,} new "
          f"cards); {report.kept:,} kept their stored detail (it differs from what the pricing files give"
          + (f", e.g. {', '.join(report.kept_examples)}" if report.kept_examples else "") + ")")
    if "bytes_after" in out:
        print(f"compacted: {out['bytes_before'] / 1e6:,.1f} MB -> {out['bytes_after'] / 1e6:,.1f} MB")
    return 0


# --- show ------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    pricer = _pricer(_pricing_dir(args))
    at = parse_time(args.at) if args.at else datetime.now(UTC)
    provider = args.provider or guess_provider(args.model)
    rates = pricer.rates(provider, args.model, at, args.variant)
    if rates is None:
        print(f"spendgate: no price for {provider} model {args.model!r} on {at.date()}: requests are recorded as "
              "unpriced (see `spendgate prices check`)", file=sys.stderr)  # fmt: skip
        return 1
    if args.json:
        print_json({"provider": provider, "at": at.isoformat(), **rates.as_dict()})
        return 0
    rows = []
    for name, p in rates.prices.items():
        tiers = ", ".join(f">{s:,}: {v}" for s, v in p.tiers)
        rows.append({"rate": name, "base": str(p.base), "tiers (cliff)": tiers or "-", "source": f"{p.ref}; {p.source}" if p.ref else p.source})
    table(f"{provider} {args.model} (catalogue id {rates.model_id}), {args.variant}, {at.date()}", rows,
          ["rate", "base", "tiers (cliff)", "source"])  # fmt: skip
    for n in rates.notes:
        console.print(f"note: {n}")
    return 0


# --- explain ---------------------------------------------------------------------------------


def _money(v: Any) -> str:
    return "-" if v is None else usd(v, 6)  # micro-dollars, the one rounding rule (spendgate/money.py)


def alternative_lines(alts: dict[str, Any]) -> list[str]:
    """Side-by-side views kept in the price detail: list price next to a provider-stated cost,
    Copilot premium requests next to the list-price equivalent."""
    out = []
    listed = alts.get("list_price")
    if listed:
        out.append(f"  side by side: list-price equivalent {_money(listed.get('total'))} "
                   f"(as {listed.get('model_id') or '?'}; {listed.get('source')})")
    cp = alts.get("copilot_premium")
    if cp and cp.get("premium_requests") is None:
        out.append(f"  side by side: Copilot premium requests unknown: {cp.get('note')}")
    elif cp:
        out.append(f"  side by side: Copilot premium requests {cp['premium_requests']} (multiplier {cp['multiplier']}, "
                   f"row {cp['model_row']!r}) = {_money(cp['overage_usd'])} at "
                   f"${cp['overage_usd_per_premium_request']} per premium request beyond the plan's allowance")
        if cp.get("note"):
            out.append(f"    {cp['note']}")
        out.append(f"    source: {cp['source']}")
    return out


def explain_lines(row: dict[str, Any]) -> list[str]:
    """The calculation as text, from what the row stored (pure: tested directly)."""
    out = [
        f"request {row['request_id']}  {row['ts']}",
        f"  {row['user']} via {row['client']}: {row['provider']} {row['endpoint']} model {row.get('model') or '?'}",
        f"  outcome {row['outcome']}{' (estimated usage)' if row.get('estimated') else ''}"
        + (f"; note: {row['note']}" if row.get("note") else ""),
    ]
    if row.get("requested_model"):
        out.append(f"  substituted: the client asked for {row['requested_model']}; a step-down rule ran "
                   f"{row.get('model') or '?'} instead and it was priced as that model")
    basis = row.get("billing_basis") or "api"
    out.append(f"  billing basis: {basis} ({billing.explain(basis, row.get('credential'))})")
    if basis == "subscription":
        out.append(f"  plan: {row['plan']} (the policy's plans: section)" if row.get("plan") else
                   "  plan: none found in the policy's plans: for this user and vendor (a personal seat, or a "
                   "plan missing from the policy)")  # fmt: skip
        out.append(f"  invoiced: $0 (the seat is billed, not the tokens); notional cost at list price "
                   f"{_money(row.get('notional_usd'))} (what the same tokens would cost through the API, "
                   f"computed below); budgets counted {_money(row.get('charged_usd'))}")  # fmt: skip
    usage = Usage(**{k: int(row.get(k) or 0) for k in Usage.__dataclass_fields__})
    out.append(
        f"  usage: input {usage.input_tokens:,} (uncached {usage.uncached_input_tokens:,}, cache read "
        f"{usage.cache_read_tokens:,}, cache write 5m {usage.cache_write_5m_tokens:,}, 1h "
        f"{usage.cache_write_1h_tokens:,}); output {usage.output_tokens:,} (reasoning {usage.reasoning_tokens:,}); "
        f"web searches {usage.web_search_requests:,}"
    )
    kinds = [f"{name.removesuffix('_tokens').replace('_', ' ')} {n:,}" for name in
             ("input_audio_tokens", "input_image_tokens", "input_video_tokens", "cache_read_audio_tokens",
              "output_audio_tokens", "output_image_tokens", "output_video_tokens") if (n := getattr(usage, name))]
    if kinds:
        out.append("  of which: " + ", ".join(kinds))
    units = [f"{label} {n:,}" for label, n in (
        ("audio seconds", usage.audio_seconds), ("input characters", usage.input_characters),
        ("images", usage.output_images), ("video seconds", usage.output_video_seconds),
        ("of them above 720p", usage.output_video_high_res_seconds)) if n]
    if units:
        out.append("  billed per unit: " + ", ".join(units))
    if row.get("modifiers"):
        out.append(f"  served with: {row['modifiers']}")
    detail = json.loads(row["price_detail"]) if row.get("price_detail") else None
    if not detail:
        if row["outcome"] == "unpriced":
            out.append(f"  no price was known for this model, so cost is unknown (never $0); budgets were charged "
                       f"{_money(row.get('charged_usd'))} (the policy's unpriced fallback)")  # fmt: skip
        else:
            out.append(f"  not priced: {row['price_source']}; cost {_money(row.get('cost_usd'))}, "
                       f"budgets charged {_money(row.get('charged_usd'))}")  # fmt: skip
    else:
        tier = detail.get("tier_above_input_tokens")
        n = detail.get("input_tokens_for_tier", usage.input_tokens)
        out.append(f"  priced as {detail.get('model_id')} ({detail.get('variant', 'standard')})")
        for m in detail.get("modifiers") or []:
            out.append(f"  modifier: {m.get('name')} {m.get('value')} -> {m.get('effect')}"
                       + (f" [{m['source']}]" if m.get("source") else ""))
        out.append(f"  tier: all input {n:,} tokens " + (f"> {tier:,}: every token takes the >{tier:,} tier rate"
                                                          if tier else "is below every tier threshold: base rates"))  # fmt: skip
        total = Decimal(0)
        for ln in detail["lines"]:
            qty, rate, per, cost = ln["quantity"], Decimal(ln["rate"]), Decimal(ln["per"]), Decimal(ln["cost"])
            total += cost
            if ln.get("rate_name") == "audio_hours":
                unit = f"s x ${rate.normalize():f}/hour"
            elif ln.get("rate_name") == "input_mchars":
                unit = f"chars x ${rate.normalize():f}/M"
            elif ln.get("rate_name", "").startswith("video_second"):
                unit = f"s x ${rate.normalize():f}/s"
            else:
                unit = f"tokens x ${rate.normalize():f}/MTok" if per == 1_000_000 else f"x ${rate.normalize():f} each"
            tier_note = f", tier >{ln['tier_above']:,}" if ln.get("tier_above") else ""
            src = ln.get("source", detail.get("source"))
            if ln.get("ref"):  # an override: the entry's own source (contract, correction) and the file's hash
                src = f"{ln['ref']}; {src}"
            out.append(f"    {ln['label']:<30} {qty:>12,} {unit:<24} = {_money(cost):>14}   "
                       f"[{ln['rate_name']}{tier_note}; {src}]")  # fmt: skip
        out.append(f"    {'total':<30} {'':>12} {'':<24} = {_money(total):>14}")
        priced = row.get("notional_usd") if basis == "subscription" else row.get("cost_usd")
        if priced is not None and abs(Decimal(str(priced)) - total) > Decimal("0.0000001"):
            out.append(f"  WARNING: the stored {'notional ' if basis == 'subscription' else ''}cost "
                       f"{_money(priced)} differs from these lines")
        if basis == "subscription":
            out.append(f"  ledger: cost {_money(row.get('cost_usd'))} (invoiced), notional "
                       f"{_money(row.get('notional_usd'))}, budgets charged {_money(row.get('charged_usd'))}")
        else:
            out.append(f"  ledger: cost {_money(row.get('cost_usd'))}, budgets charged {_money(row.get('charged_usd'))}")
        for note in detail.get("notes") or []:
            out.append(f"  note: {note}")
        out += alternative_lines(detail.get("alternatives") or {})
        out.append(f"  price version: catalogue {detail.get('catalogue') or '?'}"
                   + (f"; overrides {detail['overrides']}" if detail.get("overrides") else "; no overrides file"))
    for h in row.get("reprice_history") or []:
        out.append(f"  re-priced {h['repriced_at']} (run {h['run_id']}): {_money(h['old_cost_usd'])} -> "
                   f"{_money(h['new_cost_usd'])} [was {h['old_price_source']}]")  # fmt: skip
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    row = source(args).query("price_request", request_id=args.request_id)
    if row is None:
        print(f"spendgate: no request {args.request_id!r} in the ledger", file=sys.stderr)
        return 1
    if args.json:
        if row.get("price_detail"):  # recomputed from the row's rate card, or stored on an old row
            row["price_detail"] = json.loads(row["price_detail"])
        print_json(row)
        return 0
    # plain text, never re-wrapped to the terminal width; the model and names are client-supplied: escaped
    print("\n".join(escaped(line) for line in explain_lines(row)))
    return 0
