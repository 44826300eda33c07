"""mitmproxy's hook dispatch, without its per-addon overhead; same calls, same order, same errors.

`AddonManager.trigger_event` offers every event to every addon in the chain (mitmdump has 35,
spendgate adds its own under the script loader) and, for each, enters the `safecall` context
manager, starts an `invoke_addon` coroutine, runs the `_iter_hooks` generator and rebuilds the
hook's arguments with `dataclasses.fields`, whether or not the addon has the hook at all. Four of
a request's lifecycle events (and the `update` event each one triggers) cost ~540 µs of CPU that
way in a warm loop, ~25% of what plain mitmdump spends on a 100 KB request; measured in
docs/architecture.md ("Issue 18, tenth part").

`install` replaces `trigger_event` with one loop that does the same work without that overhead:
it walks the same chain on every event, as lazily as mitmproxy's `traverse` (nothing is cached:
addons added, removed or reloaded, even by the hook running, are seen as mitmproxy sees them),
calls the same bound hooks with the same arguments in the same order, awaits what they return
when it is awaitable, stops at `AddonHalt`, lets `OptionsError` through, and logs any other error
as mitmproxy's `safecall` does (same message and traceback), after which the next top-level addon
runs. It patches only the mitmproxy code it was written against: the six functions it stands in
for must be mitmproxy's own, unwrapped, and their source must hash to `VERIFIED`; otherwise it
leaves mitmproxy as it is and warns (the gateway then works as before, only slower).

One thing it adds, for the budget (eighteenth review): mitmproxy loads every `-s` script under one
top-level addon, so an error (or `AddonHalt`) in an operator's script listed before spendgate,
perhaps on a header the client chose, ended that event for spendgate too, and a provider request
went upstream unmetered. Addons passed to `guard` have their hook for an event called after the
chain even when an error or a halt cut the chain short before reaching them.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import textwrap
import types
from collections.abc import Iterable
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks

log = logging.getLogger("spendgate")

_MARK = "_spendgate_dispatch"
# sha256 of the six functions' source (see _fingerprint): the same in mitmproxy 12.1.0 to 12.3.1
VERIFIED = frozenset({"5b1201f07881037d5803b02e5c7351f8c3a481d8e2b637825edab2357c14109c"})
stock: Any = None  # mitmproxy's own trigger_event, once install replaced it (the tests compare the two)
_guarded: dict[int, Any] = {}  # id -> addon whose hooks run even when an error or a halt cut the chain short
_END = object()


def _parts() -> tuple[tuple[Any, types.ModuleType], ...]:
    am = addonmanager.AddonManager
    return ((vars(am).get("trigger_event"), addonmanager), (vars(am).get("invoke_addon"), addonmanager),
            (vars(am).get("_iter_hooks"), addonmanager), (getattr(addonmanager.safecall, "__wrapped__", None), addonmanager),
            (addonmanager.traverse, addonmanager), (vars(hooks.Hook).get("args"), hooks))  # fmt: skip


def _fingerprint() -> str | None:
    """The six functions `trigger_event` stands in for, hashed from their source; None unless each
    is mitmproxy's own function, defined in its module and wrapped by nothing (a wrapper someone
    put around one would be lost, and `inspect.getsource` reads through `functools.wraps`)."""
    parts = _parts()
    for fn, module in parts:
        code = getattr(fn, "__code__", None)
        if code is None or code.co_filename != module.__file__ or hasattr(fn, "__wrapped__"):
            return None
    if getattr(addonmanager.safecall, "__code__", None) is None or \
            addonmanager.safecall.__code__.co_filename != contextlib.__file__:
        return None  # safecall must be the contextmanager over mitmproxy's generator, nothing else
    try:
        text = "\n".join(textwrap.dedent(inspect.getsource(fn)).strip() for fn, _ in parts)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _report(error: BaseException) -> None:
    """mitmproxy's `safecall` report of an addon's error: the same message, and the traceback from
    the addon's own frame on (mitmproxy cuts it at `invoke_addon`; ours is the frame to cut)."""
    tb = error.__traceback__
    tb = (tb.tb_next or tb) if tb is not None else None
    if isinstance(error, StopIteration):  # raised in mitmproxy's invoke_addon coroutine, PEP 479 made it this
        cause, error = error, RuntimeError("coroutine raised StopIteration")
        error.__cause__ = cause
    addonmanager.logger.error(f"Addon error: {error}", exc_info=(type(error), error, tb))


async def trigger_event(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    """`AddonManager.trigger_event`, `invoke_addon` and `_iter_hooks` in one loop (mitmproxy 12),
    then the hooks of guarded addons the chain did not reach."""
    name = event.name
    args: list[Any] | None = None  # read when a hook is found, as mitmproxy does per hook
    called: list[Any] = []  # guarded addons whose hook this event has called
    cut = False
    traverse = addonmanager.traverse
    for top in self.chain:
        try:
            a: Any = top
            rest = None
            while True:  # traverse((top,)), inlined: top, then (looked for after its hook) its addons
                func = getattr(a, name, None)
                if func:
                    if callable(func):
                        if args is None:
                            args = event.args()
                        if _guarded and id(a) in _guarded:
                            called.append(a)
                        res = func(*args)
                        if res is not None and inspect.isawaitable(res):
                            await res
                    elif not isinstance(func, types.ModuleType):  # e.g. "from mitmproxy import log": skipped
                        raise exceptions.AddonManagerError(f"Addon handler {name} ({a}) not callable")
                if rest is None:
                    if not hasattr(top, "addons"):
                        break
                    rest = traverse(top.addons)
                a = next(rest, _END)
                if a is _END:
                    break
        except exceptions.AddonHalt:
            cut = True
            break
        except exceptions.OptionsError:
            raise
        except Exception as e:
            _report(e)
            cut = True
    if cut and _guarded:
        await _run_guarded(event, called)


async def _run_guarded(event: hooks.Hook, called: list[Any]) -> None:
    """The hooks of guarded addons an error or a halt kept from this event, in their order."""
    for a in list(_guarded.values()):
        func = getattr(a, event.name, None)
        if a in called or not callable(func):
            continue
        log.warning("spendgate: another addon's error or halt cut the %s event short; running %s's hook now",
                    event.name, type(a).__name__)
        try:
            res = func(*event.args())
            if res is not None and inspect.isawaitable(res):
                await res
        except exceptions.AddonHalt:
            return
        except Exception as e:
            _report(e)


def guard(addons: Iterable[Any]) -> None:
    """Call these addons' hooks for every event, even when an addon before them raises or halts."""
    _guarded.update((id(a), a) for a in addons)


def unguard(addons: Iterable[Any]) -> None:
    """Forget addons `guard` was given (their script was unloaded or reloaded)."""
    for a in addons:
        _guarded.pop(id(a), None)


def install() -> bool:
    """Replace `AddonManager.trigger_event` once per process; False (and a warning) when this
    mitmproxy's dispatch is not the code `trigger_event` was checked against."""
    am: Any = addonmanager.AddonManager
    if getattr(am.trigger_event, _MARK, False):
        return True
    found = _fingerprint()
    if found not in VERIFIED:
        log.warning("spendgate: this mitmproxy dispatches hooks differently from the versions checked "
                    "(fingerprint %s); leaving its dispatch as it is, slower, and an error in a script "
                    "before spendgate's can keep spendgate's hooks from running (docs/security.md)", found)
        return False
    global stock
    stock = am.trigger_event
    setattr(trigger_event, _MARK, True)
    am.trigger_event = trigger_event
    return True


class FastDispatch:
    """`mitmdump -s addons/dispatch.py`: the dispatch alone, for plain mitmdump (scripts/bench's
    like-for-like control row). The gateway installs it itself (addons/gateway.py)."""

    def load(self, loader: Any) -> None:  # noqa: D102
        install()


addons = [FastDispatch()]
