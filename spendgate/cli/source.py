"""Where the CLI gets its answers: the ledger file itself, or the gateway holding it.

DuckDB gives one process the file; when a gateway runs, `open_source` finds it through the
discovery file next to the ledger and asks its admin API instead.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from spendgate import resources
from spendgate.fsutil import discovery_path
from spendgate.store.engine import duckdb
from spendgate.store.ledger import LedgerLocked, connect, migrate


def default_policy() -> Path:
    """SPENDGATE_POLICY, else the shipped example (here, not in budget_cmds, so light commands need not import it).

    Callers ask only when no gateway answered and no --policy was given; falling back to the example
    says so on stderr once, since its limits are not the company's (a new user read the example's
    $50 days as their own budgets, and filed a request nobody could decide)."""
    if env := os.environ.get("SPENDGATE_POLICY"):
        return Path(env)
    example = resources.example_policy()
    global _told
    if not _told:
        _told = True
        print(f"spendgate: no --policy was given: using the example policy {example} "
              "(pass --policy FILE or set SPENDGATE_POLICY)", file=sys.stderr)
    return example


_told = False  # default_policy's notice, once per command


class SourceError(RuntimeError):
    """Neither the file nor a gateway could answer; the message says why and what to do."""


def default_db() -> Path:
    """SPENDGATE_DB, else data/spendgate.duckdb in the source checkout (what scripts/run uses)."""
    if env := os.environ.get("SPENDGATE_DB"):
        return Path(env)
    return resources.data_root() / "data" / "spendgate.duckdb"


class Source:
    """Runs named queries (see spendgate.reports.registry) locally or on the gateway."""

    def __init__(self, call: Callable[[str, dict[str, Any], str], Any], where: str) -> None:
        self._call = call
        self.where = where

    def query(self, name: str, **params: Any) -> Any:
        return self._call(name, {k: v for k, v in params.items() if v is not None}, "GET")

    def post(self, name: str, **params: Any) -> Any:
        return self._call(name, params, "POST")

    def download(self, name: str, **params: Any) -> bytes:
        """A file the source builds (e.g. `export`), as bytes, from the file or the gateway alike."""
        return b"".join(self.download_chunks(name, **params))

    def download_chunks(self, name: str, **params: Any) -> Iterator[bytes]:
        """The same file as chunks of at most 1 MiB, never whole in memory (exports of a month are
        hundreds of MB). Consume it to the end (or close it) so its temp file is removed."""
        return self._call(name, {k: v for k, v in params.items() if v is not None}, "RAW")


def _gateway_call(db: Path, token: str | None = None) -> tuple[Callable[[str, dict[str, Any], str], Any], str] | None:
    """Calls to the gateway holding `db`, with the admin token of its discovery file, or with
    `token` (a person's spendgate token: the gateway then acts as that person)."""
    disc = discovery_path(db)
    try:
        info = json.loads(disc.read_text())
    except (OSError, ValueError):
        return None
    url, token = info["url"], token or info["token"]
    import urllib.error  # here, not at the top: only a gateway call needs them (~20 ms of every start)
    import urllib.request

    from spendgate import outbound

    def call(name: str, params: dict[str, Any], method: str) -> Any:
        data = None
        target = f"{url}/api/{name}"
        raw = method == "RAW"
        method = "GET" if raw else method
        if method == "GET":
            target += "?" + urlencode({k: str(v) for k, v in params.items()})
        else:
            data = json.dumps(params, default=str).encode()
        req = urllib.request.Request(target, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data:
            req.add_header("Content-Type", "application/json")
        try:
            if raw:
                return _chunks(outbound.open_url(req, timeout=300))  # loopback: never a proxy
            with outbound.open_url(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", str(e))
            except ValueError:
                msg = str(e)
            raise SourceError(f"gateway answered {e.code}: {msg}") from None
        except OSError as e:
            raise SourceError(
                f"the ledger {db} is held by a gateway at {url}, which did not answer ({e}); "
                f"if it is gone, remove {disc}"
            ) from None

    return call, f"gateway {url}"


def _chunks(resp: Any, size: int = 1 << 20) -> Iterator[bytes]:
    """An HTTP response body in chunks (then closed)."""
    with resp:
        while chunk := resp.read(size):
            yield chunk


def open_checked_store(url: str) -> Any:
    """A read pool on the shared store at `url` (spendgate.store.pg_read.open_store), its schema
    checked (an unmigrated store: "run `spendgate store migrate`"); the caller closes it.
    Raises SourceError for a URL that is not postgresql:// or a store that cannot answer."""
    from spendgate.store.pg_read import open_store
    from spendgate.store.postgres import StoreError

    if not url.startswith(("postgresql://", "postgres://")):
        raise SourceError("--store takes a postgresql:// URL")
    try:
        store = open_store(url)
        try:
            store.check_schema()
        except BaseException:
            store.close()
            raise
    except StoreError as e:
        raise SourceError(str(e)) from None
    return store


def open_store_source(url: str, *, write: bool = False) -> Source:
    """The ledger shared by gateway replicas (PostgreSQL), read where it lies.

    The reports that read only the ledger (spendgate.store.pg_read.DIRECT: ledger, spend, top's
    overview, series, blocks, unpriced, subscriptions) and `export` run on the store itself, from
    its day/month rollups plus the raw rows at the edges, so they cost the same at 10M rows as at
    10k; `explain` reads its one row, rate card and price audit there too. `prices check`, which
    needs a table only a replica's DuckDB file has, still loads the ledger into an in-memory
    DuckDB first, once per command.
    """
    from spendgate.store.pg_read import DIRECT, ReadCursor
    from spendgate.store.postgres import PostgresStore, StoreError, redact

    if write:
        raise SourceError("this command changes the ledger; with a shared store, run it against a replica (--db)")
    store = open_checked_store(url)
    atexit.register(store.close)  # the pool's threads, stopped before the interpreter waits on them
    direct = _local_call(ReadCursor(store))  # type: ignore[arg-type]  # a DuckDB-cursor look-alike
    copied: list[Callable[[str, dict[str, Any], str], Any]] = []

    def copy() -> Callable[[str, dict[str, Any], str], Any]:
        if not copied:
            try:
                bulk = PostgresStore(url, timeout=5, statement_timeout=3600).open()  # the copy may take minutes
                try:
                    con = duckdb.connect(":memory:")
                    migrate(con)
                    bulk.copy_ledger(con)
                finally:
                    bulk.close()
            except StoreError as e:
                raise SourceError(str(e)) from None
            copied.append(_local_call(con))
        return copied[0]

    def call(name: str, params: dict[str, Any], method: str) -> Any:
        try:
            if name in DIRECT or method == "RAW":
                return direct(name, params, method)
            return copy()(name, params, method)
        except StoreError as e:
            raise SourceError(str(e)) from None

    return Source(call, f"store {redact(url)}")


_READ_ONLY: dict[Path, duckdb.DuckDBPyConnection] = {}


def read_connection(db: Path) -> duckdb.DuckDBPyConnection:
    """The ledger opened read-only, once per process: a command that reads it in two places
    (`spend --by user`: the spend, then plans and billing) pays the ~50 ms open once.
    Raises LedgerLocked when a gateway holds the file."""
    key = Path(db).resolve()
    con = _READ_ONLY.get(key)
    if con is None:
        con = _READ_ONLY[key] = connect(key, read_only=True)
    return con


def open_source(db: Path, *, write: bool = False) -> Source:
    """The file when we can open it; otherwise the running gateway that holds it."""
    if not db.exists() and not discovery_path(db).exists():
        raise SourceError(f"no ledger at {db} (start the gateway with scripts/run, or pass --db)")
    try:
        con = connect(db) if write else read_connection(db)
    except LedgerLocked:
        gw = _gateway_call(db)
        if gw is None:
            raise SourceError(f"{db} is locked by another process and no gateway discovery file was found") from None
        return Source(*gw)
    except duckdb.Error as e:
        raise SourceError(f"cannot open {db}: {e}") from None
    if write:
        migrate(con)

    return Source(_local_call(con), f"file {db}")


def _local_call(con: duckdb.DuckDBPyConnection) -> Callable[[str, dict[str, Any], str], Any]:
    """Named queries (and downloads) answered from a DuckDB connection in this process."""

    def local(name: str, params: dict[str, Any], method: str) -> Any:
        if method == "RAW":
            from spendgate.reports import dashboard

            return dashboard.download_chunks(con, name, params)  # DuckDB's memory capped while it runs
        try:
            from spendgate.reports import registry

            return registry.run_query(con, name, params)
        except ValueError as e:  # bad params (an ambiguous id prefix, a bad date): said, not a traceback
            raise SourceError(str(e)) from None

    return local
