"""The policy's cache: a restart with an unchanged policy reads back what YAML made of it.

Composing a 10,000-user policy is ~0.4-0.6 s of a gateway's start on the 2-core machine (issue 18's
"ready in <= 2 s"); reading its parse back as JSON is ~20 ms. Entries live in spendgate's cache
folder (`cache_dir()`), are named by a SHA-256 of the text and of the code that parses it, hold
their own name, hold only parses YAML found no problem in, and are believed only as far as the
account's own private files in its own private folder (docs/security.md, nineteenth review); the
schema stamps beside them (named by spendgate.policy.model) are written and checked here the same way. Every check after
parsing (schema, dates, identity) runs on every load. Off on Windows, where no owner and mode
bits tell a private file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from spendgate import fsutil, yamlcheck

log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """spendgate's cache (policy stamps and parses): SPENDGATE_CACHE_DIR, else
    $XDG_CACHE_HOME/spendgate or ~/.cache/spendgate (created 0700 on first write);
    None when SPENDGATE_CACHE_DIR is off, 0 or none, on Windows, or when there is no home."""
    root = os.environ.get("SPENDGATE_CACHE_DIR") or ""
    if root.lower() in ("off", "0", "none") or not hasattr(os, "geteuid"):
        return None  # off; or Windows, where no owner and mode bits say a file is this account's alone
    try:
        return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spendgate"
    except (RuntimeError, KeyError):  # no home directory to be found
        return None


def load_policy_yaml(text: str) -> tuple[Any, yamlcheck.Marks, list[yamlcheck.Problem]]:
    """The policy text's parse, from the cache when it holds one (see load_yaml_cached)."""
    root = cache_dir()
    return load_yaml_cached(text, root / "policy-parsed" if root else None)


_CACHE_KEEP = 8  # parses kept: the current policy and a few it may be rolled back to


def entry_name(text: str, *installs: str, extra: str = "") -> str:
    """A cache entry's name: a SHA-256 over `extra` (a schema), the files that turn the text into
    the cached verdict (each by path, size and mtime) and the text, so any edit, upgrade or schema
    change misses. Raises OSError when one of `installs` cannot be read."""
    parts = [extra]
    for f in installs:
        st = os.stat(f)
        parts.append(f"{f}\0{st.st_size}\0{st.st_mtime_ns}")
    h = hashlib.sha256()
    for part in (*parts, text):
        h.update(part.encode("utf-8", "surrogatepass") + b"\0\0")
    return h.hexdigest()


def _cache_entry(folder: Path, text: str) -> Path:
    """The entry of `text`'s parse: named by it and by what parses it (spendgate.yamlcheck, PyYAML)."""
    return folder / entry_name(text, yamlcheck.__file__, yaml.__file__)


def load_yaml_cached(text: str, folder: Path | None) -> tuple[Any, yamlcheck.Marks, list[yamlcheck.Problem]]:
    """yamlcheck.load_yaml_with_marks, remembering clean parses in `folder` (None: no cache).

    Only parses without problems are kept, so every YAML problem is found and reported on every
    load, with its position. An entry is believed only when it is a regular file (not a link) owned
    by this account and readable by no one else (0600, written atomically): whoever could plant one
    could rewrite the policy the gateway enforces. Anything unreadable, foreign or malformed is a
    miss. File I/O: never on the event loop (start-up, the policy watcher's thread, the CLI)."""
    entry = None
    if folder is not None:
        try:
            entry = _cache_entry(folder, text) if private_folder(folder) else None
            hit = _read_entry(entry) if entry is not None else None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):  # unreadable or garbled: a miss
            hit = None
        if hit is not None:  # positions (and texts) composed again only when a check asks for one
            return hit, yamlcheck.LazyMarks(lambda: yamlcheck.load_yaml_with_marks(text)[1]), []
    doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
    if entry is not None and not problems and isinstance(doc, dict):
        _write_entry(entry, doc, len(text))
    return doc, marks, problems


def private_folder(folder: Path, missing_ok: bool = True) -> bool:
    """The folder itself is this account's, no symlink, and writable by no one else: in a folder
    others can write, they could move our own entries about (an older policy's parse under the
    current policy's name) or leave a FIFO where an entry is read. Missing: created 0700 on write."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return missing_ok
    except OSError:  # a file where a folder would be, no access: no cache
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        log.warning("policy parse cache %s is not this account's private folder; not used", folder)
        return False
    return True


def _private_file(st: os.stat_result) -> bool:
    """A regular file (not a link, FIFO or device) of this account's, readable by no one else."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _read_entry(entry: Path) -> dict | None:
    try:  # O_NONBLOCK: a FIFO at the name must not wait for a writer (fstat then refuses it)
        fd = os.open(entry, os.O_RDONLY | fsutil.O_NOFOLLOW | fsutil.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not _private_file(os.fstat(f.fileno())):
            log.warning("policy parse cache %s is not this account's private file; not used", entry)
            return None
        saved = json.loads(f.read())
        if saved.get("key") != entry.name:  # one of our entries under another name (moved, linked): not this text's
            return None
        doc = saved["doc"]
        if not isinstance(doc, dict):
            return None
        try:  # most recently used: kept when older entries are pruned (the file read, not whatever the name is now)
            os.utime(f.fileno() if os.utime in os.supports_fd else entry)
        except OSError:
            pass
    return doc


def _write_entry(entry: Path, doc: dict, text_chars: int) -> None:
    """Keep a clean parse; one JSON cannot hold exactly (a !!binary value), one much larger than its
    text (aliases written out: a 10 KB policy was a 1.1 GB entry, thirty-first review F3) or a
    disk that cannot take it is simply not cached."""
    try:
        data = json.dumps({"key": entry.name, "doc": doc}, allow_nan=False, separators=(",", ":"))
        if len(data) > 4 * text_chars + (1 << 20):
            return
        if json.loads(data)["doc"] != doc:  # would not come back equal: not cached
            return
        fsutil.private_dir(entry.parent)
        if not private_folder(entry.parent, missing_ok=False):  # others could move it about: not left there
            return
        fsutil.write_atomic(entry, data.encode())
        prune(entry.parent, _CACHE_KEEP)
    except (OSError, TypeError, ValueError) as e:
        log.debug("policy parse not cached: %s", e)


def prune(folder: Path, keep: int) -> None:
    """Keep the `keep` most recently used files in `folder` (a file that goes meanwhile is no error)."""
    def used(p: Path) -> int:
        try:
            return p.lstat().st_mtime_ns
        except OSError:
            return 0

    for old in sorted(folder.iterdir(), key=used, reverse=True)[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


def private_stamp(stamp: Path) -> bool:
    """An empty marker file (the schema stamps) is believed like an entry: this account's regular
    file, not a link, private, in a private folder; its mtime is refreshed (pruned last)."""
    if not private_folder(stamp.parent, missing_ok=False):
        return False
    try:
        st = os.lstat(stamp)
    except OSError:
        return False
    if not _private_file(st):
        log.warning("policy schema stamp %s is not this account's private file; not used", stamp)
        return False
    try:
        os.utime(stamp, follow_symlinks=False) if os.utime in os.supports_follow_symlinks else os.utime(stamp)
    except OSError:
        pass
    return True


def schema_stamp(text: str, schema_text: str, kind: str) -> Path | None:
    """Where a "this exact text passed this exact schema" stamp lives (`kind`: its folder, e.g.
    policy-valid), or None (no cache, or no jsonschema to name).

    Schema validation costs a gateway's start or a read command ~50-70 ms: importing jsonschema and
    its format checkers, then the check. Its verdict is a pure function of the text, what reads it
    into a document (yamlcheck, PyYAML), the schema and the jsonschema install, so the stamp's name
    is a SHA-256 over all of them (each install by its file's path, size and mtime): any edit,
    schema change or upgrade misses it and validates in full -- a reader that reads the same text
    otherwise must not find a stamp for a document nobody checked (twenty-seventh review). Only
    passes are stamped (`remember_stamp`) and believed (`private_stamp`); problems are found (and
    reported) on every load. The code that decides a verdict is named too: the policy's and the
    overrides' readers (model.py's `_valid_fast` shortcut, rates.py), and jsonschema's `referencing`.
    SPENDGATE_CACHE_DIR=off turns it off."""
    import importlib.util

    base = cache_dir()
    if base is None:
        return None
    try:
        specs = [importlib.util.find_spec(name) for name in ("jsonschema", "referencing")]
        if any(spec is None or spec.origin is None for spec in specs):
            return None
        return base / kind / entry_name(text, *(spec.origin for spec in specs), *_DECIDERS, yamlcheck.__file__,
                                        yaml.__file__, extra=schema_text)
    except (OSError, ValueError):  # no jsonschema: validate in full
        return None


# Our own files whose code turns a document into a schema verdict (read by path, never imported here)
_DECIDERS = tuple(str(Path(__file__).resolve().parents[1] / f) for f in ("policy/model.py", "pricing/rates.py"))


_STAMPS_KEEP = 16  # schema stamps kept (pruned least recently used first, like the parses)


def remember_stamp(stamp: Path) -> None:
    """Write a stamp (an empty 0600 file) where `private_stamp` will believe it, and prune the
    oldest; a cache that cannot be written, or a folder others could plant stamps in, is no error."""
    try:
        fsutil.private_dir(stamp.parent)
        if not private_folder(stamp.parent):
            return
        fsutil.write_atomic(stamp, b"")
        prune(stamp.parent, _STAMPS_KEEP)
    except OSError:
        pass
