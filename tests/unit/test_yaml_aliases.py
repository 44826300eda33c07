"""Nested aliases ("billion laughs") are a positioned problem, not minutes of CPU and gigabytes.

Ten lines of YAML whose anchors each name the one before ten times stand for 10^9 values: the
build expanded every alias and took ~0.4 s at six levels, 10x more per level. Every file that
people edit (the policy, price overrides, MDM site configs) loads through yamlcheck.
"""

from __future__ import annotations

import pytest

from spendgate import yamlcheck
from spendgate.policy import model
from tests.unit.test_yaml_fast import slow as pure_python


def laughs(levels: int, indent: str = "") -> str:
    lines = [f'{indent}a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"




@pytest.mark.parametrize("load", [yamlcheck.load_yaml_with_marks, pure_python], ids=["libyaml", "pyyaml"])
@pytest.mark.parametrize("levels", [7, 9])
def test_nested_aliases_are_a_positioned_problem(load, levels) -> None:
    doc, _marks, problems = load(laughs(levels))
    assert doc is None and len(problems) == 1
    (p,) = problems
    assert (p.line, p.col) == (levels - 1, 5)  # the anchor whose repetitions weigh most: the last one named
    assert "billion laughs" in p.message and f"at most {yamlcheck.ALIAS_VALUES:,}" in p.message
    assert "named again by 10 aliases" in p.message


@pytest.mark.parametrize("load", [yamlcheck.load_yaml_with_marks, pure_python], ids=["libyaml", "pyyaml"])
def test_the_bound_counts_the_values_aliases_add(load, monkeypatch) -> None:
    """`x` is 10 values (the sequence and its 9 items); ten aliases to it add 100."""
    text = "x: &x [1, 2, 3, 4, 5, 6, 7, 8, 9]\ny: [" + ", ".join(["*x"] * 10) + "]\n"
    monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 100)
    doc, _marks, problems = load(text)
    assert problems == [] and doc["y"] == [list(range(1, 10))] * 10
    monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 99)
    doc, _marks, problems = load(text)
    assert doc is None and problems[0].message.startswith("YAML: aliases repeat 100 values (at most 99)")
    assert (problems[0].line, problems[0].col) == (1, 4)  # the anchor, `&x`


def test_a_policy_that_uses_anchors_as_people_do_reads_as_before() -> None:
    text = ("version: 1\ndefaults:\n  user: &cap {day: 20, month: 300}\nusers:\n"
            + "".join(f"  u{i}@example.com: {{budgets: *cap}}\n" for i in range(2000)))
    policy = model.parse(text, "p.yaml")
    assert len(policy.users) == 2000


def test_a_cycle_is_still_the_build_s_problem() -> None:
    for text in ("x: &r [*r]\n", "a: &m {b: *m}\n", "a: &m {b: [1, {c: *m}]}\n"):
        doc, _marks, problems = yamlcheck.load_yaml_with_marks(text)
        assert doc is None and "alias inside what it names" in problems[0].message


def test_a_policy_of_nested_aliases_is_refused_with_its_position() -> None:
    text = "version: 1\nbudgets: {}\nx:\n" + laughs(9, "  ")
    with pytest.raises(model.PolicyError) as err:
        model.parse(text, "p.yaml")
    assert str(err.value).startswith("p.yaml:11:7: YAML: aliases repeat 1,234,567,880 values")


def test_a_reload_of_nested_aliases_is_rejected_and_the_last_good_policy_kept(tmp_path) -> None:
    from tests.unit.test_gateway_core import make

    gw = make(tmp_path, "defaults: {user: {day: 20}}\n")
    try:
        before = gw.policy.sha256
        assert not gw.reload_policy(("version: 1\nx:\n" + laughs(9, "  ")).encode())
        assert gw.policy.sha256 == before
    finally:
        gw.close()


def test_price_overrides_of_nested_aliases_are_a_problem(tmp_path) -> None:
    from spendgate.pricing.rates import Pricer

    bad = tmp_path / "overrides.yaml"
    bad.write_text("models:\n" + laughs(9, "  "))
    with pytest.raises(Exception, match="billion laughs"):
        Pricer(bad)


def test_bytes_are_read_alike() -> None:
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(laughs(9).encode())
    assert doc is None and "billion laughs" in problems[0].message
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(b"x: &x [1]\ny: [*x, *x]\n")
    assert problems == [] and doc == {"x": [1], "y": [[1], [1]]}
