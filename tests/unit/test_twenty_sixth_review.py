"""Twenty-sixth review: the collector paused at start-up and reload (spendgate.heap), the YAML fast
build and its lazy positions (spendgate.yamlcheck), and rebuild_counters summing per counter.

Findings (each test failed on 85d85cd):
  F1 settle(1) on a second start in the same process (a run-time option change rebuilds the
     gateway) unfreezes the old objects into the oldest generation and then collects only the young
     ones: the closed gateway (reference cycles) is frozen again, kept until a policy reload.
  F2 heap.paused read gc.isenabled() and called gc.disable() as two steps: another thread's
     pause ending between them left the collector off for good.
  F3 LazyMarks: a second thread touching the marks while the first builds them saw an empty
     mapping; a build that raised left them empty for good.
  F4 LazyMarks: reads and writes it did not cover (== of two lazy marks, |, setdefault, update,
     pop, del, clear, texts =, pickle) saw an empty mapping or were overwritten by the build.
The rest document properties that held.
"""

from __future__ import annotations

import gc
import pickle
import threading
import weakref
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate import heap, yamlcheck
from spendgate.budgets.book import BudgetBook, ledger_row_scopes
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.policy import model
from spendgate.policy.model import PolicyError
from tests.support.rebuild import rebuild_from_rows
from tests.unit.test_hotpath import _addon_module
from tests.unit.test_poll_impact import POLICY, Node
from tests.unit.test_policy import GOOD
from tests.unit.test_subscriptions import PLANS
from tests.unit.test_yaml_fast import positioned


@pytest.fixture
def collector_on(monkeypatch):
    monkeypatch.setattr(heap, "_settled", False)
    gc.enable()
    yield
    gc.enable()
    gc.unfreeze()


# --- F1: a young settle after an earlier freeze ---------------------------------------------------

def test_f1_a_second_young_settle_frees_what_the_first_froze_and_was_dropped(collector_on) -> None:
    """FINDING (Medium). `settle` says "the previous freeze is undone first, so objects replaced
    since are still freed"; unfreezing puts them in the oldest generation, which settle(1) skips."""
    node = Node()
    ref = weakref.ref(node)
    heap.settle(1)  # the first start: node frozen with everything else
    del node  # replaced since (the old gateway after a run-time option change)
    heap.settle(1)  # the second start (SpendGate.running again)
    assert ref() is None


def test_f1_a_gateway_rebuilt_by_an_option_change_is_freed(tmp_path, collector_on) -> None:
    """FINDING (Medium). The proxy edge closes its gateway and starts another when a spendgate_
    option changes at run time; the closed one (a cyclic graph: policy, pricer, book, workflow)
    stayed frozen until the next policy reload, one more gateway kept per change."""
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.test import taddons

    mod = _addon_module()
    gate = mod._gate
    (tmp_path / "policy.yaml").write_text(POLICY)
    with taddons.context(ProxyAuth(), *mod.addons) as tctx:
        tctx.configure(gate, spendgate_db=str(tmp_path / "l.duckdb"), spendgate_policy=str(tmp_path / "policy.yaml"),
                       spendgate_admin_port=-1)
        gate.running()
        try:
            old = weakref.ref(gate.gateway)
            tctx.configure(gate, spendgate_user="someone-else")  # the gateway is closed and built again
            assert gate.gateway is not None and gate.gateway is not old()
            assert old() is None
        finally:
            gate.done()


# --- F2: two pauses in two threads --------------------------------------------------------------

def test_f2_a_pause_ending_while_another_begins_leaves_the_collector_on(monkeypatch, collector_on) -> None:
    """FINDING (Low: a narrow race, but the collector stays off for the process's life). The watcher
    thread's reload pauses while the event loop's start-up or configure pause ends."""
    real = gc
    main = threading.current_thread()
    inside, may_leave, left = threading.Event(), threading.Event(), threading.Event()
    hook = [False]

    class Collector:  # heap's view of gc: the reload thread's pause ends while this one reads isenabled
        def __getattr__(self, name):
            return getattr(real, name)

        def isenabled(self) -> bool:
            on = real.isenabled()
            if hook[0] and threading.current_thread() is main:
                hook[0] = False
                may_leave.set()
                left.wait(0.5)  # the other pause ends here (unless a lock keeps it waiting)
            return on

    def other() -> None:
        with heap.paused():
            inside.set()
            may_leave.wait(5)
        left.set()

    monkeypatch.setattr(heap, "gc", Collector())
    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(5)
    hook[0] = True
    with heap.paused():
        pass
    may_leave.set()
    t.join(5)
    assert real.isenabled()


def test_held_paused_restores_the_collector_on_every_start_failure(tmp_path, monkeypatch, collector_on) -> None:
    """HELD. configure raising OptionsError (a policy that fails to validate), running() when the
    gateway raises something other than GatewayError (a locked ledger: test_startup_heap), and a
    reload the policy refuses (a recursive alias: RecursionError before the fix below, a
    positioned problem now) all leave the collector on."""
    from mitmproxy import exceptions
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.test import taddons

    from spendgate.gateway import Gateway
    from tests.unit.test_gateway_core import make

    gw = make(tmp_path, POLICY.removeprefix("version: 1\n"))
    try:
        assert not gw.reload_policy(b"version: 1\nx: &r [*r]\n")  # refused and recorded, not raised
        assert gc.isenabled()
        assert not gw.reload_policy(b"version: [broken")
        assert gc.isenabled()
    finally:
        gw.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntimezone: Mars/Base\n")
    mod = _addon_module()
    with taddons.context(ProxyAuth(), *mod.addons) as tctx:
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(mod._gate, spendgate_db=str(tmp_path / "x.duckdb"), spendgate_policy=str(bad),
                           spendgate_admin_port=-1)
        assert gc.isenabled()

    def broken(self, settings, checked=None):
        raise RuntimeError("not a GatewayError: running() lets it through")

    (tmp_path / "p2.yaml").write_text(POLICY)
    mod = _addon_module()
    with taddons.context(ProxyAuth(), *mod.addons) as tctx:
        tctx.configure(mod._gate, spendgate_db=str(tmp_path / "y.duckdb"), spendgate_policy=str(tmp_path / "p2.yaml"),
                       spendgate_admin_port=-1)
        with monkeypatch.context() as m:
            m.setattr(Gateway, "__init__", broken)
            with pytest.raises(RuntimeError):
                mod._gate.running()
        assert mod._gate.gateway is None and gc.isenabled()


# --- F3 / F4: LazyMarks --------------------------------------------------------------------------

_TEXT = "a: 1\nb: [NO, 010]\n"


def _lazy() -> yamlcheck.LazyMarks:
    marks = yamlcheck.load_yaml_with_marks(_TEXT)[1]
    assert type(marks) is yamlcheck.LazyMarks
    return marks


_REF = dict(positioned(_TEXT)[1])


def test_f3_a_second_thread_waits_for_the_positions_instead_of_seeing_none() -> None:
    """FINDING (Low: no caller shares marks across threads today)."""
    seen: list = []
    started = threading.Event()

    def build() -> yamlcheck.Marks:
        started.set()
        t.join(1)  # the other thread reads while this one builds
        return positioned(_TEXT)[1]

    marks = yamlcheck.LazyMarks(build)
    t = threading.Thread(target=lambda: (started.wait(5), seen.append((len(marks), yamlcheck.mark(marks, ("b", 1))))))
    t.start()
    assert marks[("b", 1)] == (2, 9)
    t.join(5)
    assert seen == [(len(_REF), (2, 9))]


def test_f3_a_build_that_fails_is_tried_again_not_left_empty() -> None:
    """FINDING (Low). The first failure (a RecursionError at a deep stack, a MemoryError) used to
    leave an empty mapping: every later position silently 1:1."""
    calls: list = []

    def build() -> yamlcheck.Marks:
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("the first build fails")
        return positioned(_TEXT)[1]

    marks = yamlcheck.LazyMarks(build)
    with pytest.raises(MemoryError):
        ("a",) in marks  # noqa: B015
    assert yamlcheck.mark(marks, ("b", 1)) == (2, 9)


@pytest.mark.parametrize("read", [
    pytest.param(lambda m: m == _lazy(), id="lazy == lazy"),
    pytest.param(lambda m: not (m != _lazy()), id="lazy != lazy"),
    pytest.param(lambda m: (m | {}) == _REF, id="|"),
    pytest.param(lambda m: list(reversed(m)) == list(reversed(_REF)), id="reversed"),
    pytest.param(lambda m: m.setdefault(("a",), (9, 9)) == (1, 4), id="setdefault"),
    pytest.param(lambda m: m.pop(("a",), None) == (1, 4), id="pop"),
    pytest.param(lambda m: m.popitem() is not None, id="popitem"),
    pytest.param(lambda m: (m.update({("a",): (9, 9)}), m[("a",)])[1] == (9, 9), id="update"),
    pytest.param(lambda m: (m.__ior__({("a",): (9, 9)}), m[("a",)])[1] == (9, 9), id="|="),
    pytest.param(lambda m: (m.__delitem__(("a",)), ("a",) in m)[1] is False, id="del"),
    pytest.param(lambda m: (m.clear(), len(m))[1] == 0, id="clear"),
    pytest.param(lambda m: (setattr(m, "texts", {}), m.texts)[1] == {}, id="texts ="),
    pytest.param(lambda m: dict(pickle.loads(pickle.dumps(m))) == _REF, id="pickle"),
])  # fmt: skip
def test_f4_every_read_and_write_sees_the_built_positions(read) -> None:
    """FINDING (Low: no production caller uses these today, but every clean parse now returns a
    LazyMarks, and its docstring promises every way of reading or writing)."""
    assert read(_lazy())


# --- held: the fast build ------------------------------------------------------------------------

TRICKY = [
    "a: &x {b: 1}\nc: *x\n", "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n", "<<: {a: 1}\n", "? [a, b]\n: 1\n",
    "? {a: 1}\n: 2\n", "a: !!str 1\nb: !!int '1'\nc: !!timestamp 2026-01-01\nd: !!binary aGk=\ne: !foo bar\n",
    "t: 2026-01-01T10:00:00+05:30\nu: 2026-01-01 10:00:00.5 -3\nv: !!timestamp 'x'\n", "n: 1" + "0" * 5000 + "\n",
    "z: -0\nw: -0.0\nf: 1_000\ng: 1_000.5\nh: 0b101\ni: 0o17\nj: 1:30\nk: 0x_1f\nl: 190:20:30\n", "", "---\n",
    "a: 1\n---\nb: 2\n", "\ufeffa: NO\n", "a:\n  b:\n    c: 1\n    c: 2\n", "1: a\n2: b\ntrue: c\n~: d\n'1': e\n",
    "a: !!null ''\nb: !!bool 'yes'\nc: !!float '.5'\nd: !!int 010\ne: !!bool NO\n", "a: !!int 'x'\n", "a: [.NaN]\n",
    "a: 1e400\n", "a: !!float 1e400\n", "a: !!set {x, y}\n", "a: !!omap [{b: 1}]\n", "a: =\nb: !!value =\n",
    "a: !!python/name:os.system ''\n", "a: !!str\nb: !!null\n", "a: !<tag:yaml.org,2002:int> 5\n",
    "%TAG !e! tag:yaml.org,2002:\n---\na: !e!int 7\n", "a: [1, &k 3, *k]\n", "&a a: *a\n", "!!int 3: x\n",
    "users:\n  NO: {}\n  on: {}\nworkspaces:\n  eng: {members: [010, 'x']}\n", "a: 2026-01-01\nb: 2026-1-1\n",
    "k: [unclosed\n", "\t bad: tab\n", "a: \x07\n", "- just\n- a list\n", "plain scalar\n", "x: &r [*r]\n",
]  # fmt: skip


@pytest.mark.parametrize("text", TRICKY)
def test_held_the_fast_build_gives_what_the_positioned_build_gave(text: str) -> None:
    """HELD: anchors, merge keys, complex keys, tags, zoned timestamps, big ints, -0, 1_000, empty
    and multi-document streams, a BOM, duplicates at depth, non-text keys, a recursive alias."""
    try:
        want = positioned(text)
    except Exception as e:
        with pytest.raises(type(e)):
            yamlcheck.load_yaml_with_marks(text)
        return
    doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert (repr(doc), problems, dict(marks), marks.texts) == (repr(want[0]), want[2], dict(want[1]), want[1].texts)


def _outcome(text: str) -> str:
    try:
        p = model.parse(text, "p.yaml", datetime(2026, 11, 29).date())
    except PolicyError as e:
        return f"rejected: {e}"
    return "ok: " + "; ".join(w.render("p.yaml") for w in p.warnings)


@pytest.mark.parametrize("text", [
    GOOD.replace('"*@platform.acme.com"]', "010]"),
    GOOD.replace("owners: [cfo@acme.com]", "owners: [NO]"),
    GOOD.replace("user: carol@acme.com", "user: on"),
    GOOD.replace("timezone: Europe/Berlin", "timezone: NO"),
    GOOD.replace("timezone: Europe/Berlin", "timezone: Mars/Base"),
    GOOD.replace("until: 2026-12-31", "until: 2026-12-32"),
    GOOD.replace("bob@acme.com: {budgets: {day: 5}, until: 2026-01-01}", "bob@acme.com: {workspaces: [nope, NO]}"),
    GOOD.replace("  key: {day: 100}", "  key: {<<: {day: 100}}"),
    GOOD,
])  # fmt: skip
def test_held_a_cached_parse_places_problems_and_quote_hints_as_a_fresh_one(text, tmp_path, monkeypatch) -> None:
    """HELD: a policy whose schema check fails after a clean (cached) parse still says "quote it"
    at the same FILE:LINE:COL; so do later problems and warnings."""
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", "off")
    fresh = _outcome(text)
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    assert _outcome(text) == fresh  # the parse written to the cache
    assert _outcome(text) == fresh  # and read back from it
    if "cannot read" not in fresh:  # YAML found no problem: the parse was cached and served from it
        assert any((tmp_path / "cache" / "policy-parsed").iterdir())


def test_held_no_node_tree_outlives_the_parse(monkeypatch) -> None:
    """HELD: LazyMarks keeps libyaml's node tree and loader until it builds; nothing keeps the
    marks once parse returns, so a reload never piles them up."""
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", "off")
    for _ in range(3):
        model.parse(GOOD.replace("until: 2026-01-01", "until: 2027-01-01"), "p.yaml")  # no warning: never built
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, yamlcheck.LazyMarks)]


# --- held: rebuild_counters ----------------------------------------------------------------------

_POLICIES = {mode: model.parse(f"version: 1\nsubscription_usage: {mode}\norganization: {{name: acme}}\n"
                               + ("subscription_budgets: {user: {day: 5}, plans: {claude-max: {day: 2}}}\n"
                                  if mode == "separate" else "") + PLANS)
             for mode in ("count", "ignore", "separate")}  # fmt: skip
_ROWS = st.lists(st.tuples(
    st.sampled_from(WINDOWS), st.sampled_from(["alice", "bob", "unattributed"]), st.sampled_from([None, "", "fp1"]),
    st.sampled_from([None, "", "eng", "eng,ops", "eng,eng"]), st.sampled_from([None, "api", "subscription"]),
    st.sampled_from([None, "claude-max", "nope"]),
    st.sampled_from([None, Decimal(0), Decimal("0E-10"), Decimal("-1.5"), Decimal("2.25"), Decimal("1E-10"),
                     Decimal("9999999999.9999999999")])), max_size=40)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_POLICIES)), _ROWS)
def test_held_rebuild_counters_sums_as_the_per_row_adds_did(mode, rows) -> None:
    """HELD: subscription rows in every mode, zero / negative / None amounts, None and repeated
    workspaces, several windows: the counters equal the old one-add-per-row-and-scope loop's."""
    policy, now = _POLICIES[mode], datetime(2026, 3, 15, 12, tzinfo=UTC)
    starts = {w: bounds(w, now, policy.timezone)[0] for w in WINDOWS}
    old = BudgetBook(policy)
    for window, user, fp, ws, basis, plan, amount in rows:  # 7a77a04's loop
        if not amount:
            continue
        for scope in ledger_row_scopes(policy, user, fp, ws, basis or "api", plan, now):
            old.store.add((scope, window, starts[window]), Decimal(amount))

    new = BudgetBook(policy)
    assert rebuild_from_rows(rows, new, now) == len(rows)
    counters = lambda book: {k: (c.spent, c.reserved) for k, c in book.store.items()}  # noqa: E731
    assert counters(new) == counters(old)


def test_held_the_bench_pairs_within_each_round_and_alternates_the_order() -> None:
    """HELD: --startup's differences are taken within a round, and the two trees swap places every
    other round (with the default 5 rounds: 3 rounds one way, 2 the other)."""
    src = (Path(__file__).resolve().parents[2] / "scripts" / "bench.py").read_text()
    body = src[src.index("def startup_only"):src.index("def metered")]
    assert "if rnd % 2:\n                order.reverse()" in body
    assert 'zip(ready[f"spendgate {label}"], ready[f"before {label}"])' in body


# --- pre-existing, found by this review and fixed after it -------------------------------------

@pytest.mark.parametrize("text", ["x: &r [*r]\n", "a: &m {b: *m}\n", "deep: " + "[" * 5000 + "]" * 5000 + "\n"])
def test_a_self_containing_alias_or_a_runaway_nesting_is_a_problem_not_an_exception(text: str) -> None:
    """`x: &r [*r]` raised RecursionError out of the parse: a reload escaped reload_policy without
    its rejection being recorded, and a start's configure raised it instead of OptionsError."""
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert doc is None and len(problems) == 1 and "alias" in problems[0].message
    with pytest.raises(model.PolicyError, match="nested too deeply"):
        model.parse("version: 1\nbudgets: {}\nusers:\n  x: &r [*r]\n" if "&r" in text else text, "p.yaml")


def test_the_start_up_policy_is_not_kept_by_the_proxy_edge_once_the_gateway_runs(tmp_path, collector_on) -> None:
    """SpendGate._checked held the start-up (policy, pricer) for the process's life: after a reload a
    second whole policy (10,000 users: tens of MB) stayed in memory."""
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.test import taddons

    (tmp_path / "p.yaml").write_text(POLICY)
    mod = _addon_module()
    gate = mod._gate
    with taddons.context(ProxyAuth(), *mod.addons) as tctx:
        tctx.configure(gate, spendgate_db=str(tmp_path / "l.duckdb"), spendgate_policy=str(tmp_path / "p.yaml"),
                       spendgate_admin_port=-1)
        gate.running()
        try:
            assert gate._checked is not None and gate._checked[2] is None  # settings and file stamps only
            first = weakref.ref(gate.gateway.policy)
            (tmp_path / "p.yaml").write_text(POLICY.replace("month: 1000", "month: 2000"))
            assert gate.gateway.reload_policy()
            gate.gateway._plan_for("anthropic", "a@acme.com", datetime.now(UTC))  # the plan index follows on use
            gc.unfreeze()
            gc.collect()
            assert first() is None
        finally:
            gate.done()
