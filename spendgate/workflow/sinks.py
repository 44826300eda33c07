"""Where notices go: the log, a generic JSON webhook, a Slack incoming webhook, email over SMTP.

Delivery runs on one background thread (`Dispatcher`), never on the proxy's event loop nor on
the meter worker. A failed attempt is retried with exponential backoff without holding up other
sinks or notices (due jobs sit in a heap), and the final outcome of each (notice, sink) delivery
is handed to `record` (the audit log). The queue is bounded: a dead sink cannot grow memory.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import queue
import re
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from spendgate import outbound
from spendgate.policy.sections import SinkConfig

log = logging.getLogger(__name__)

MAX_PENDING = 1000


@dataclass
class Notice:
    """Something to tell people: an alert, a new increase request, or a decision on one."""

    kind: str  # alert | request | decision
    title: str  # short subject line
    text: str  # one line a person can act on (names the command to run)
    recipients: tuple[str, ...]  # users/owners/approvers this is for (email addresses or names)
    payload: dict[str, Any]  # the JSON the webhook sink posts (plus event, title, text, recipients)
    scope: str | None = None
    ref: str | None = None  # request id or alert key, for the audit trail
    enrich: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)  # run once on the sink thread

    def body(self) -> dict[str, Any]:
        return {"event": self.kind, "title": self.title, "text": self.text, "recipients": list(self.recipients),
                **self.payload}


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one notice on one sink."""

    sink: str
    kind: str
    outcome: str  # delivered | failed | skipped | dropped
    attempts: int
    error: str | None
    scope: str | None
    ref: str | None


class SinkError(RuntimeError):
    pass


def _url(cfg: SinkConfig) -> str:
    url = cfg.url or (os.environ.get(cfg.url_env) if cfg.url_env else None)
    if not url:
        raise SinkError(f"no URL (environment variable {cfg.url_env} is empty)")
    return url


def post_json(url: str, doc: dict[str, Any], headers: tuple[tuple[str, str], ...], timeout: float) -> None:
    req = urllib.request.Request(url, data=json.dumps(doc, default=str).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("User-Agent", "spendgate")
    for k, v in headers:
        req.add_header(k, v)
    try:  # loopback: direct; other hosts: the environment's proxies (spendgate.outbound)
        with outbound.open_url(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        raise SinkError(f"HTTP {e.code}") from None
    except OSError as e:
        raise SinkError(f"{type(e).__name__}: {getattr(e, 'reason', None) or e}") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def slack_escape(text: str) -> str:
    """Slack's three control characters as entities (api.slack.com "Escaping text"): a request's
    reason is shown as written, never as a channel ping (`<!channel>`) or a disguised link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(n: Notice) -> dict[str, Any]:
    """Slack incoming-webhook format: `text` for notifications, one mrkdwn block for the client."""
    title, text = slack_escape(n.title), slack_escape(n.text)
    lines = [f"*{title}*", text]
    if n.recipients:
        lines.append("For: " + slack_escape(", ".join(n.recipients)))
    return {"text": f"{title}: {text}", "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                                                  "text": "\n".join(lines)}}]}


def email_message(cfg: SinkConfig, n: Notice) -> EmailMessage | None:
    to = sorted({r for r in n.recipients if "@" in r} | set(cfg.to))
    if not to:
        return None
    msg = EmailMessage()
    msg["From"] = cfg.sender or "spendgate"
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"[spendgate] {n.title}"
    body = n.text + "\n\n" + json.dumps(n.body(), indent=2, default=str) + "\n"
    msg.set_content(body)
    return msg


def send(cfg: SinkConfig, n: Notice) -> bool:
    """Deliver one notice on one sink; False when the sink has nothing to do for it. Raises on failure."""
    if cfg.type == "log":
        # one line per notice: a reason's line breaks must not forge log lines of their own
        log.warning("spendgate %s: %s", n.kind, _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", n.text))
        return True
    if cfg.type == "webhook":
        post_json(_url(cfg), n.body(), cfg.headers, cfg.timeout_seconds)
        return True
    if cfg.type == "slack":
        post_json(_url(cfg), slack_body(n), cfg.headers, cfg.timeout_seconds)
        return True
    if cfg.type == "email":
        msg = email_message(cfg, n)
        if msg is None:
            return False
        try:
            smtp_cls = smtplib.SMTP_SSL if cfg.ssl else smtplib.SMTP
            with smtp_cls(cfg.host, cfg.port, timeout=cfg.timeout_seconds) as s:
                if cfg.starttls:
                    s.starttls(context=ssl.create_default_context())
                user = os.environ.get(cfg.username_env) if cfg.username_env else None
                if user:
                    s.login(user, os.environ.get(cfg.password_env or "", ""))
                s.send_message(msg)
        except (OSError, smtplib.SMTPException) as e:
            raise SinkError(f"SMTP: {type(e).__name__}: {e}") from None
        return True
    raise SinkError(f"unknown sink type {cfg.type!r}")


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    notice: Notice = field(compare=False)
    sink: SinkConfig = field(compare=False)
    attempt: int = field(default=0, compare=False)
    error: str | None = field(default=None, compare=False)


class Dispatcher:
    """One thread delivering notices to sinks, with retries and backoff; outcomes go to `record`."""

    def __init__(
        self,
        record: Callable[[Delivery], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        deliver: Callable[[SinkConfig, Notice], bool] = send,
    ) -> None:
        self.record = record
        self.clock = clock
        self.deliver = deliver
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._pending = 0
        self._current: _Job | None = None  # the delivery in flight, waited for at close
        self._requests = 0  # of which request notices
        self._alerts = 0  # and alerts
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spendgate-sinks", daemon=True)
        self._thread.start()

    def submit(self, notice: Notice, sinks: list[SinkConfig]) -> None:
        """Never blocks: queue one job per sink that takes this kind of notice."""
        for s in sinks:
            if notice.kind not in s.events:
                continue
            asked, alert = notice.kind == "request", notice.kind == "alert"
            with self._lock:
                # requests (filed by anyone) may hold a quarter of the queue and everything but
                # alerts three quarters: a flood of requests, or of the decisions auto-approval
                # makes at once, never crowds out the budget alerts (eighth review E2, ninth N4)
                full = (self._pending >= MAX_PENDING or (asked and self._requests >= MAX_PENDING // 4)
                        or (not alert and self._pending - self._alerts >= MAX_PENDING * 3 // 4))
                if not full:
                    self._pending += 1
                    self._requests += asked
                    self._alerts += alert
            if full:
                self._record(Delivery(s.name, notice.kind, "dropped", 0, "too many undelivered notices",
                                      notice.scope, notice.ref))
                continue
            self._inbox.put(_Job(0.0, next(self._seq), notice, s))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery has an outcome (for tests and the offline CLI)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def close(self, grace: float = 2.0) -> None:
        """Stop: give due deliveries `grace` seconds, then record what is left as failed. The
        delivery in flight is waited for (its sink's timeout and a little more), so its outcome
        is recorded before the caller closes the store its records go to."""
        self.flush(grace)
        self._stop.set()
        self._inbox.put(None)
        current = self._current
        self._thread.join(timeout=max(10.0, (current.sink.timeout_seconds + 2) if current else 0))
        if self._thread.is_alive():
            log.warning("spendgate: a sink delivery is still running at shutdown; its outcome is not recorded")
        for job in self._drain():
            self._finish(job, "failed", job.error or "gateway stopped before delivery")

    def _drain(self) -> list[_Job]:
        left = list(self._heap)
        self._heap.clear()
        while True:
            try:
                j = self._inbox.get_nowait()
            except queue.Empty:
                break
            if j is not None:
                left.append(j)
        return left

    def _record(self, d: Delivery) -> None:
        try:
            self.record(d)
        except Exception:
            log.exception("cannot record a delivery outcome")

    def _finish(self, job: _Job, outcome: str, error: str | None) -> None:
        self._record(Delivery(job.sink.name, job.notice.kind, outcome, job.attempt, error,
                              job.notice.scope, job.notice.ref))
        with self._idle:
            self._pending -= 1
            self._requests -= job.notice.kind == "request"
            self._alerts -= job.notice.kind == "alert"
            self._idle.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = max(0.0, self._heap[0].due - self.clock()) if self._heap else None
            try:
                job = self._inbox.get(timeout=wait) if wait is None or wait > 0 else self._inbox.get_nowait()
            except queue.Empty:
                job = None
            if job is not None:
                job.due = self.clock()
                heapq.heappush(self._heap, job)
            while self._heap and self._heap[0].due <= self.clock() and not self._stop.is_set():
                self._attempt(heapq.heappop(self._heap))

    def _attempt(self, job: _Job) -> None:
        n = job.notice
        if n.enrich is not None:
            try:
                n.payload.update(n.enrich())
            except Exception:
                log.exception("enriching a notice failed; sending it without the extra facts")
            n.enrich = None
        job.attempt += 1
        self._current = job
        try:
            did = self.deliver(job.sink, n)
        except Exception as e:
            job.error = str(e)[:300] or type(e).__name__
            if job.attempt > job.sink.retries:
                log.error("spendgate: sink %s failed %d times, giving up: %s", job.sink.name, job.attempt, job.error)
                self._finish(job, "failed", job.error)
            else:
                job.due = self.clock() + job.sink.backoff_seconds * (2 ** (job.attempt - 1))
                job.seq = next(self._seq)
                heapq.heappush(self._heap, job)
            return
        self._finish(job, "delivered" if did else "skipped", None if did else "no recipients for this sink")
