"""Eleventh review (F6): a policy file read while it was being written in place was applied.

A tool that truncates the policy and then writes it (`cat > policy.yaml`, some editors, config
management) leaves, for a moment, a valid prefix: the lines before `defaults:` parse as a policy
with no caps. The watcher read each change once and applied it, so a request in that window had
no budget. Now the watcher thread applies a new content only when it reads the same one round
later (a file still being written reads differently), and a reload that drops caps is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spendgate.policy.model import cap_count, parse
from spendgate.policy.watch import FileWatcher
from tests.attacks.tenth_review_support import make

FULL = "version: 1\ntimezone: UTC\ndefaults:\n  user: {hour: 0.05, day: 1}\n"
PREFIX = "version: 1\ntimezone: UTC\n"


def test_a_content_seen_once_is_not_applied_until_it_reads_the_same_again(tmp_path: Path):
    p = tmp_path / "policy.yaml"
    p.write_text(FULL)
    calls: list[str] = []
    w = FileWatcher({p: lambda path: calls.append(path.read_text())}, interval=0)
    p.write_text(PREFIX)  # the truncated moment of an in-place write ...
    assert w.poll(settle=True) == []
    p.write_text(FULL + "  # edited\n")  # ... then the whole file
    assert w.poll(settle=True) == []  # new content again: wait one more round
    assert w.poll(settle=True) == [p] and calls == [FULL + "  # edited\n"]  # the prefix was never applied


def test_a_reload_that_drops_caps_is_logged(tmp_path: Path, caplog):
    assert cap_count(parse(FULL)) == 2 and cap_count(parse(PREFIX)) == 0
    gw = make(tmp_path, "defaults:\n  user: {hour: 0.05, day: 1}\n")
    try:
        (tmp_path / "policy.yaml").write_text(PREFIX)
        with caplog.at_level(logging.WARNING, logger="spendgate.gateway"):
            assert gw.reload_policy()
        assert "has 0 budget caps, 2 fewer than before" in caplog.text
    finally:
        gw.close()
