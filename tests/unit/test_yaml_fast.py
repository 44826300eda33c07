"""libyaml (CSafeLoader) reads hand-edited YAML exactly as PyYAML's own loader does: data, marks, texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# Documents as people write them, and as they get them wrong: the fast build (no positions until a
# check asks) must give what the positioned build gives, and fall back to it wherever that one
# reports a problem or keeps a source text for "quote it".
_SCALARS = st.sampled_from(["1", "010", "0x1f", "1.5", "1e3", ".nan", "-.inf", "NO", "on", "~", "null", "true",
                            "2026-01-01", "2026-02-30", "2026-01-01T10:00:00Z", "'quoted'", '"x"', "plain text",
                            "!!str 12", "!!binary aGk=", "!!set {a, b}", "!!float 1", "|\n    block\n", "&x 7", "*x",
                            "! 12", "[a, {b: 1}]", "{}", "=", "<<"])
_KEYS = st.sampled_from(["a", "b", "NO", "010", "2026-01-01", "users", "alice@acme.com", "[1, 2]", "{x: 1}", "? k",
                         "<<", "&k a", "!!str c", "'q'"])


@st.composite
def _yaml_docs(draw, depth: int = 0) -> str:
    pad = "  " * depth
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        key = draw(_KEYS)
        if depth < 2 and draw(st.booleans()):
            lines.append(f"{pad}{key}:")
            if draw(st.booleans()):
                lines.append(draw(_yaml_docs(depth + 1)))
            else:
                lines += [f"{pad}  - {draw(_SCALARS).replace(chr(10), chr(10) + pad + '    ')}"
                          for _ in range(draw(st.integers(1, 3)))]
        else:
            lines.append(f"{pad}{key}: {draw(_SCALARS).replace(chr(10), chr(10) + pad)}")
    return "\n".join(lines)


def positioned(text: str):
    """The libyaml parse built with every position at once (what the fast builds defer)."""
    saved = yamlcheck._plain, yamlcheck._from_events

    def unusual(*args):
        raise yamlcheck._Unusual

    yamlcheck._plain = yamlcheck._from_events = unusual
    try:
        doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
        built = yamlcheck.Marks(marks)  # built now, while only the positioned build runs
        built.texts = dict(marks.texts)
        return doc, built, problems
    finally:
        yamlcheck._plain, yamlcheck._from_events = saved


@settings(max_examples=400, deadline=None)
@given(_yaml_docs())
def test_the_fast_build_matches_the_positioned_one(text: str) -> None:
    try:
        pdoc, pmarks, pproblems = positioned(text)
    except Exception as e:
        with pytest.raises(type(e)):
            yamlcheck.load_yaml_with_marks(text)
        return
    doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert (doc, problems) == (pdoc, pproblems)
    assert (dict(marks), marks.texts) == (dict(pmarks), pmarks.texts)


@settings(max_examples=400, deadline=None)
@given(_yaml_docs())
def test_the_event_read_is_the_composed_read_or_steps_aside(text: str) -> None:
    """Straight from libyaml's events, a document reads as the composed build reads it; where it
    cannot (a tag, an anchor, an error) it raises and the composed read runs."""
    try:
        doc = yamlcheck._from_events(text, {})
    except Exception:
        return
    assert (doc, []) == (yamlcheck._composed(text, {})[0], yamlcheck._composed(text, {})[2])


@pytest.mark.parametrize("text", [f.read_text() for f in FILES] + [
    "users:\n" + "".join(f"  dev{i}@x.example: {{budgets: {{day: {i % 7}}}, until: 2099-01-0{1 + i % 9}}}\n"
                         for i in range(200)),
    "a: [1, [2, [3, {b: [4]}]]]\n", "top scalar\n", "- 1\n- x\n"])
def test_plain_documents_take_the_event_read(text: str) -> None:
    """The files we ship and a many-users policy are read from events (the start-up path)."""
    assert yamlcheck._from_events(text, {}) == yamlcheck._composed(text, {})[0]


@pytest.mark.parametrize("text", ["a: &x 1\nb: *x\n", "a: !!str 1\n", "a: 1\n---\nb: 2\n", "a: 1\na: 2\n",
                                  "? [1]\n: x\n", "a: .nan\n", "a: 2026-02-30\n", "a: [1\n", "", "a: ! 5\n",
                                  "&r {a: *r}\n", "[" * 65 + "]" * 65 + "\n", "[" * 5000 + "]" * 5000 + "\n"])
def test_documents_the_event_read_leaves_to_the_composed_one(text: str) -> None:
    with pytest.raises(Exception):
        yamlcheck._from_events(text, {})
    assert yamlcheck.load_yaml_with_marks(text)[::2] == yamlcheck._composed(text, {})[::2]
