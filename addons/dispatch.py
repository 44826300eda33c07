"""mitmproxy's hook dispatch, without its per-addon overhead; same calls, same order, same errors.

`AddonManager.trigger_event` offers every event to every addon in the chain (mitmdump has 35,
spendgate adds its own under the script loader) and, for each, enters the `safecall` context
manager, starts an `invoke_addon` coroutine, runs the `_iter_hooks` generator and rebuilds the
hook's arguments with `dataclasses.fields`, whether or not the addon has the hook at all. Four of
a request's lifecycle events (and the `update` event each one triggers) cost ~540 µs of CPU that
way in a warm loop, ~25% of what plain mitmdump spends on a 100 KB request; measured in
docs/architecture.md ("Issue 18, tenth part").

`install` replaces `trigger_event` with a loop that does the same work without that overhead:
it walks the same chain with mitmproxy's own `traverse` on every event (addons added, removed or
reloaded are seen at once, nothing is cached), calls the same bound hooks with the same arguments
in the same order, awaits what they return when it is awaitable, stops at `AddonHalt`, lets
`OptionsError` through, and logs any other error through mitmproxy's own `safecall`, after which
the next top-level addon runs, as before. It patches only the mitmproxy code it was written
against: the source of the six functions it stands in for must hash to `VERIFIED`, or it leaves
mitmproxy as it is and warns (the gateway then works as before, only slower).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import textwrap
import types
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks

log = logging.getLogger("spendgate")

_MARK = "_spendgate_dispatch"
stock: Any = None  # mitmproxy's own trigger_event, once install replaced it (the tests compare the two)
# sha256 of the six functions' source (see _fingerprint): the same in mitmproxy 12.1.0 to 12.3.1
VERIFIED = frozenset({"5b1201f07881037d5803b02e5c7351f8c3a481d8e2b637825edab2357c14109c"})


def _fingerprint() -> str | None:
    """What `install` stands in for, as source text; None when it cannot be read (frozen builds)."""
    am = addonmanager.AddonManager
    parts = (am.trigger_event, am.invoke_addon, am._iter_hooks, getattr(addonmanager.safecall, "__wrapped__", None),
             addonmanager.traverse, hooks.Hook.args)
    try:
        text = "\n".join(textwrap.dedent(inspect.getsource(p)).strip() for p in parts)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


async def trigger_event(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    """`AddonManager.trigger_event`, `invoke_addon` and `_iter_hooks` in one loop (mitmproxy 12)."""
    name = event.name
    args = event.args()
    traverse = addonmanager.traverse
    for top in self.chain:
        try:
            for a in traverse((top,)) if hasattr(top, "addons") else (top,):  # traverse's first step, inline
                func = getattr(a, name, None)
                if not func:
                    continue
                if callable(func):
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
                elif not isinstance(func, types.ModuleType):  # e.g. "from mitmproxy import log": skipped
                    raise exceptions.AddonManagerError(f"Addon handler {name} ({a}) not callable")
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception:
            with addonmanager.safecall():  # mitmproxy's own report of an addon's error; the chain goes on
                raise


def install() -> bool:
    """Replace `AddonManager.trigger_event` once per process; False (and a warning) when this
    mitmproxy's dispatch is not the code `trigger_event` was checked against."""
    am: Any = addonmanager.AddonManager
    if getattr(am.trigger_event, _MARK, False):
        return True
    found = _fingerprint()
    if found not in VERIFIED:
        log.warning("spendgate: this mitmproxy dispatches hooks differently from the versions checked "
                    "(fingerprint %s); leaving its dispatch as it is", found)
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
