"""What keeps dashboard polling off proxied traffic (issue 22, proxy p99 with tabs polling): the
counter lock held in slices, a settled heap, and a ranking of budgets kept between polls."""

from __future__ import annotations

import gc
import threading
import weakref
from datetime import timedelta
from decimal import Decimal

from spendgate import heap
from spendgate.budgets import book as book_mod
from spendgate.budgets.book import MemoryCounters
from spendgate.policy.model import parse

from tests.unit.test_read_side import NOW, POLICY, busy_book, key


class CountingLock:
    """threading.Lock that counts how often it was taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0

    def __enter__(self):
        self.lock.acquire()
        self.taken += 1
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def filled(n: int) -> MemoryCounters:
    store = MemoryCounters()
    for i in range(n):
        store.add((f"user:u{i}", "day", NOW), Decimal(i) / 100)
    return store


def test_items_copies_every_counter_in_slices_of_the_lock(monkeypatch):
    monkeypatch.setattr(book_mod, "LOCKED_SLICE", 100)
    store = filled(1_000)
    with store._lock:
        whole = {k: (c.spent, c.reserved) for k, c in store._c.items()}
    store._lock = CountingLock()
    got = store.items()
    assert {k: (c.spent, c.reserved) for k, c in got} == whole
    assert store._lock.taken == 1 + 10  # the keys, then ten slices: never the whole copy in one hold
    # copies: changing them changes nothing in the store
    got[0][1].spent += Decimal(5)
    assert store.get(got[0][0]).spent == whole[got[0][0]][0]


def test_items_while_admission_writes_is_consistent_per_counter(monkeypatch):
    """Settles land between slices: each copied counter is one settle's before or after, never
    half of one (reserved released but spent not yet added)."""
    monkeypatch.setattr(book_mod, "LOCKED_SLICE", 7)
    store = filled(500)
    keys = [k for k, _ in store.items()]
    done = threading.Event()

    def settle_many() -> None:  # what admission and settle do, a counter per hold of the lock
        for _ in range(20):
            for k in keys:
                with store._lock:
                    c = store._c[k]
                    c.reserved += Decimal(1)
                    c.spent += Decimal(1)
                    c.reserved -= Decimal(1)
        done.set()

    t = threading.Thread(target=settle_many)
    t.start()
    copies = 0
    while not done.is_set() or copies == 0:
        got = store.items()
        copies += 1
        assert len(got) == 500 and all(c.reserved == 0 for _, c in got)
        assert all(c.spent == int(c.spent) + Decimal(i) / 100 - int(Decimal(i) / 100)
                   for i, (_, c) in enumerate(sorted(got, key=lambda kc: int(kc[0][0][6:]))))
    t.join()
    assert {k: c.spent for k, c in store.items()} == {k: Decimal(int(k[0][6:])) / 100 + 20 for k in keys}


def test_prune_drops_old_windows_in_slices(monkeypatch):
    monkeypatch.setattr(book_mod, "LOCKED_SLICE", 50)
    store = filled(300)
    for i in range(200):
        store.add((f"user:u{i}", "day", NOW - timedelta(days=1)), Decimal(1))
    store._lock = CountingLock()
    assert store.prune(lambda k: k[2] == NOW) == 200
    assert store._lock.taken == 1 + 4
    assert {k[2] for k, _ in store.items()} == {NOW} and len(store.items()) == 300


def test_closest_follows_a_new_policy_and_a_new_day():
    book = busy_book()
    before = key(book.closest(5))
    book.policy = parse(POLICY.replace("hour: 2,", "hour: 200,"), "p.yaml")  # a reload
    after = key(book.closest(5))
    assert after != before and all(w != "hour" or s == "user:frozen@acme.com" for s, w, _ in after)
    # an exception until today: gone tomorrow, though the policy object is the same
    book.policy = parse(POLICY.replace("users:\n", "users:\n  late@core.acme.com: {budgets: {day: 1}, until: 2026-11-18}\n"),
                        "p.yaml")
    late = {(r["scope"], r["window"]): r["limit_usd"] for r in book.closest(None, {"user:late@core.acme.com"})}
    assert late[("user:late@core.acme.com", "day")] == 1.0
    book.now = lambda: NOW + timedelta(days=1)
    late = {(r["scope"], r["window"]): r["limit_usd"] for r in book.closest(None, {"user:late@core.acme.com"})}
    assert late[("user:late@core.acme.com", "day")] == 3.0  # the default again


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_settle_freezes_survivors_and_a_later_settle_frees_what_was_dropped(monkeypatch):
    monkeypatch.setattr(heap, "_settled", False)
    assert heap.resettle() is None  # a process that never opted in is left alone
    try:
        node = Node()
        ref = weakref.ref(node)
        heap.settle()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # frozen: out of the collector's walks
        assert heap.resettle() is not None  # after a reload
        assert ref() is None
    finally:
        gc.unfreeze()


def test_a_policy_reload_resettles_the_heap(tmp_path, monkeypatch):
    from tests.unit.test_gateway_core import make

    gw = make(tmp_path, POLICY.removeprefix("version: 1\n"))
    calls = []
    monkeypatch.setattr(heap, "resettle", lambda: calls.append(1))
    try:
        gw.settings.policy.write_text(POLICY.replace("month: 1000", "month: 2000"))
        assert gw.reload_policy()
        assert calls == [1]
    finally:
        gw.close()


def test_the_kept_ranking_follows_every_admission_settle_and_grant():
    """closest() re-ranks only what changed since its last call: after each of many random
    admissions, settlements (some left open), refusals and grants that start and end, it ranks
    exactly as a fresh ranking of every budget (`status`) does."""
    import random

    from spendgate.identity import Identity
    from spendgate.reports import dashboard

    rnd = random.Random(7)
    book = busy_book()
    clock = [NOW]
    book.now = lambda: clock[0]
    grants: dict[str, Decimal] = {}
    book.grants = lambda scope, window, now: grants.get(scope, Decimal(0)) if window == "day" else Decimal(0)
    book.granted_scopes = lambda: set(grants)
    people = [Identity(user=f"u{i}@core.acme.com", source="test", key_fingerprint=f"sha256:{i:012d}",
                       workspaces=("core",)) for i in range(14)]  # two new ones too
    open_ = []
    for step in range(60):
        for _ in range(rnd.randrange(1, 6)):
            d = book.admit(rnd.choice(people), Decimal(rnd.randrange(1, 90)) / 100)
            if d.admitted:
                if rnd.random() < 0.7:
                    book.settle(d.reservation, Decimal(rnd.randrange(0, 120)) / 100)
                else:
                    open_.append(d.reservation)
        if open_ and rnd.random() < 0.5:
            book.settle(open_.pop(0), Decimal("0.01"))
        if rnd.random() < 0.2:  # a grant starts, or ends
            who = f"user:{rnd.choice(people).user}"
            if who in grants:
                del grants[who]
            else:
                grants[who] = Decimal(rnd.randrange(1, 5))
        if step == 30:
            clock[0] = NOW.replace(minute=59, second=59)  # same hour: kept
        if step == 45:
            clock[0] = NOW.replace(hour=16, minute=1)  # a new hour: built afresh
        expected = dashboard.closest_to_cap(book.status(), 10_000)
        assert key(book.closest(8)) == key(expected[:8]), step
        mine = {"user:u3@core.acme.com", "key:sha256:000000000003", "user:u13@core.acme.com"}
        assert key(book.closest(None, mine)) == key([r for r in expected if r["scope"] in mine]), step


def test_nobody_polling_keeps_no_change_set_and_prune_empties_it():
    store = filled(100)
    assert not store._changed  # nobody asked: nothing tracked (a headless or central gateway)
    assert store.changed() == [] and store._tracking
    store.add(("user:u1", "day", NOW), Decimal(1))
    store.add(("user:old", "day", NOW - timedelta(days=2)), Decimal(1))
    assert len(store._changed) == 2
    store.prune(lambda k: k[2] == NOW)  # dropped counters leave the change set too
    assert store._changed == {("user:u1", "day", NOW)}


def test_a_policy_reloaded_while_closest_ranks_does_not_break_it():
    """The watcher thread swaps the policy at any moment; rows come from what was ranked."""
    book = busy_book()
    reloaded = parse(POLICY.replace("month: 1000", "month: 999"), "p.yaml")

    class SwapOnRelease:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __enter__(self):
            self.lock.acquire()

        def __exit__(self, *exc) -> None:
            book.policy = reloaded
            self.lock.release()

    book._rank_lock = SwapOnRelease()
    first = book.closest(8)
    assert key(first) == key(busy_book().closest(8))
    assert book.closest(8)  # and the next call ranks under the new policy
