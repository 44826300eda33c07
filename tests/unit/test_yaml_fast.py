"""libyaml (CSafeLoader) reads hand-edited YAML exactly as PyYAML's own loader does: data, marks, texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from spendgate import yamlcheck

REPO = Path(__file__).resolve().parents[2]
FILES = sorted(REPO.glob("policies/*.yaml")) + sorted(REPO.glob("pricing/*.yaml"))
TRICKY = [
    "a: NO\nb: on\nc: 010\nd: 2026-01-01\ne: ~\nf: 'x'\ng: \"y\"\nh: |\n  block\n  text\n",
    "users: {alice: {budgets: {day: 5}}, alice: {budgets: {day: 6}}}\n",  # a duplicate key
    "x: [1, 2, {y: [a, b]}]\n# comment\nz: !!str 12\n",
    "d: 2026-02-30\n",  # a value YAML cannot build
    "k: [unclosed\n",  # a syntax error
    "\t bad: tab\n", "", "---\n...\n", "a: \x07\n", "- just\n- a list\n", "a: &x 1\nb: *x\n",
]  # fmt: skip


def slow(text: str):
    saved = yamlcheck._FAST_LOADER
    yamlcheck._FAST_LOADER = None
    try:
        return yamlcheck.load_yaml_with_marks(text)
    finally:
        yamlcheck._FAST_LOADER = saved


@pytest.mark.parametrize("text", [f.read_text() for f in FILES] + TRICKY)
def test_fast_loader_matches_pyyaml(text: str) -> None:
    assert yamlcheck._FAST_LOADER is not None  # libyaml is there, so this compares two loaders
    try:
        sdoc, smarks, sproblems = slow(text)
    except Exception as e:  # whatever PyYAML raises, the fast path raises alike (it falls back to it)
        with pytest.raises(type(e)):
            yamlcheck.load_yaml_with_marks(text)
        return
    doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert (doc, dict(marks), marks.texts, problems) == (sdoc, dict(smarks), smarks.texts, sproblems)
