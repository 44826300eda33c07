"""Twelfth review (T5): the watcher settled one content, the gateway applied another.

Eleventh review F6 made `FileWatcher.poll(settle=True)` wait until a file reads the same on two
rounds; but the gateway's callback then read the file again (`policy.model.load`) and the watcher
recorded the *settled* digest as seen. If the file was being rewritten at that moment (an editor
saving the same text a second time: truncate, then write), the gateway applied the truncated
prefix (no caps), the file ended byte-identical to the digest already marked seen, and no later
poll reloaded it. Now the gateway's callback parses the bytes it read and tells the watcher their
sha256, so the watcher records what was applied; a file that differs from it is read again.
A file rewritten on every round is never applied (by design) and now says so, once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spendgate.policy.model import cap_count
from spendgate.policy.watch import UNSETTLED_ROUNDS, FileWatcher
from tests.attacks.tenth_review_support import make

PREFIX = "version: 1\ntimezone: UTC\n"
EDITED = PREFIX + "defaults:\n  user: {hour: 0.10, day: 2}\n"


def test_the_policy_applied_is_the_one_in_the_file(tmp_path: Path):
    gw = make(tmp_path, "defaults:\n  user: {hour: 0.05, day: 1}\n")
    p = tmp_path / "policy.yaml"
    try:
        real = gw._watcher.callbacks[p]  # the gateway's own callback (reads the file, applies, says what)

        def saved_again_during_the_reload(path: Path):
            p.write_text(PREFIX)  # the editor's second save of the same text: truncate ...
            applied = real(path)  # ... the gateway's read lands here
            p.write_text(EDITED)  # ... and the write completes: the bytes the watcher settled on
            return applied

        w = FileWatcher({p: saved_again_during_the_reload}, interval=0, loaded={p: gw.policy.sha256})
        p.write_text(EDITED)
        assert w.poll(settle=True) == []  # first read of the edit: wait a round
        assert w.poll(settle=True) == [p] and cap_count(gw.policy) == 0  # the race: the prefix was applied
        w.callbacks[p] = real
        for _ in range(3):  # the file holds EDITED from now on
            w.poll(settle=True)
        assert cap_count(gw.policy) == 2, "the file has 2 caps; the gateway must not keep the prefix's 0"
    finally:
        gw.close()


def test_a_file_rewritten_every_round_is_reported_once(tmp_path: Path, caplog):
    p = tmp_path / "policy.yaml"
    p.write_text(EDITED)
    calls: list[str] = []
    w = FileWatcher({p: lambda path: calls.append(path.read_text())}, interval=0)
    with caplog.at_level(logging.WARNING, logger="spendgate"):
        for i in range(3 * UNSETTLED_ROUNDS):
            p.write_text(f"# generated {i}\n" + EDITED)
            w.poll(settle=True)
    assert not calls  # never read the same twice: never applied
    assert caplog.text.count("has changed on each of the last") == 1
