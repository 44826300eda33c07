"""Per-user spendgate tokens: proxy credentials for a central gateway and per-approver credentials.

`spendgate tokens issue USER` makes a random token, shows it once and stores only its SHA-256
(with the user, an id, the issue time, the expiry and the revocation time) in a state file next
to the ledger (`<db>.tokens`, mode 0600, replaced atomically). A token is 32 random bytes, so a
plain SHA-256 is enough: a slow password hash (scrypt) protects guessable passwords, and would
cost milliseconds on every proxy connection for nothing.

The gateway uses one store for two things: the `Proxy-Authorization` password of a client
(user = the token's user) and the bearer token of an approver on the admin API / dashboard.
The file is re-read when it changes (checked at most once a second), so issuing and revoking
take effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from spendgate.policy.sections import canonical_user

log = logging.getLogger(__name__)

PREFIX = "sgt_"
RECHECK_SECONDS = 1.0


class TokenError(ValueError):
    """A token operation we refuse (unknown user, expiry in the past); the message says why."""


def tokens_path(db: Path) -> Path:
    return db.with_name(db.name + ".tokens")


def _hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def _time(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    user: str
    sha256: str
    created: str
    expires: str | None = None  # ISO 8601 UTC; None: never
    revoked: str | None = None

    def valid(self, now: datetime) -> bool:
        if self.revoked:
            return False
        exp = _time(self.expires)
        return exp is None or now < exp

    def public(self, now: datetime | None = None) -> dict:
        d = asdict(self)
        d.pop("sha256")
        d["status"] = "revoked" if self.revoked else ("active" if self.valid(now or _now()) else "expired")
        return d


class TokenStore:
    """The token file: read by the gateway (verify), written by the CLI (issue, revoke)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()  # _write (under the lock) invalidates the cache
        self._by_hash: dict[str, TokenRecord] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0

    # -- reading --
    def _records(self) -> list[TokenRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.error("spendgate: cannot read the token file %s: %s", self.path, e)
            return []
        try:
            return [TokenRecord(**r) for r in raw.get("tokens", [])]
        except (TypeError, AttributeError) as e:  # hand-edited or from a newer version: no token is valid
            log.error("spendgate: malformed token file %s: %s", self.path, e)
            return []

    def _refresh(self) -> None:
        """Re-read the file when it changed (stat at most once a second; cheap on the event loop)."""
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS and self._stamp is not None:
            return
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._by_hash = {r.sha256: r for r in self._records()}
            self._stamp = stamp

    def lookup(self, token: str) -> TokenRecord | None:
        """The record of a presented token, valid or not (None: not one of ours)."""
        if not token:
            return None
        with self._lock:
            self._refresh()
            return self._by_hash.get(_hash(token))

    def verify(self, token: str, user: str | None = None, now: datetime | None = None) -> str | None:
        """The user a token stands for, if it is live (and issued to `user`, when one is given)."""
        rec = self.lookup(token)
        if rec is None or not rec.valid(now or _now()):
            return None
        if user is not None and not hmac.compare_digest(canonical_user(user).encode(), rec.user.encode()):
            return None
        return rec.user

    def invalidate(self) -> None:
        with self._lock:
            self._stamp = None

    # -- writing (the CLI) --
    def _write(self, records: list[TokenRecord]) -> None:
        """Owner-only, atomically: a temporary file made by mkstemp (O_EXCL, 0600), then os.replace."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "tokens": [asdict(r) for r in records]}, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.invalidate()

    def issue(self, user: str, expires: datetime | None = None, now: datetime | None = None) -> tuple[str, TokenRecord]:
        """A new token for `user`: (the token, shown once; its record). Raises TokenError."""
        user = canonical_user(user or "")
        if not user or any(c in user for c in ":\n\r") or len(user) > 256:
            raise TokenError(f"not a user name: {user!r} (no ':' or line breaks, at most 256 characters)")
        now = now or _now()
        token = PREFIX + secrets.token_urlsafe(32)
        rec = TokenRecord(id="t-" + secrets.token_hex(5), user=user, sha256=_hash(token), created=_iso(now),
                          expires=_iso(expires))
        with self._lock:
            self._write([*self._records(), rec])
        return token, rec

    def revoke(self, user: str, token_id: str | None = None, now: datetime | None = None) -> list[TokenRecord]:
        """Revoke a user's live tokens (or the one with `token_id`); returns what was revoked."""
        user, now = canonical_user(user), now or _now()
        done, out = [], []
        with self._lock:
            for r in self._records():
                if r.user == user and not r.revoked and (token_id is None or r.id == token_id):
                    r = TokenRecord(r.id, r.user, r.sha256, r.created, r.expires, _iso(now))
                    done.append(r)
                out.append(r)
            if done:
                self._write(out)
        return done

    def list(self, user: str | None = None) -> list[dict]:
        now = _now()
        want = canonical_user(user) if user else None
        return [r.public(now) for r in self._records() if want is None or r.user == want]
