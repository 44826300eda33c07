"""Twenty-ninth review: issue 18's nineteenth part (a plain tier priced without a copy, the row's
modifiers JSON cached per distinct set, the meter worker's parts timed by scripts/bench_hooks.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

import spendgate.pricing.rates as rates_module
from spendgate.metering.meter import Body, _encoded_modifiers, modifiers_json
from spendgate.pricing.rates import PLAIN_MODIFIER_VALUES, Pricer, PriceResult
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench_hooks  # noqa: E402

PRICER = Pricer(REPO / "pricing" / "overrides.yaml")
FIELDS = [f.name for f in dataclasses.fields(PriceResult)]  # compare=False ones (late_notes, rates) included
ATS = (datetime(2026, 11, 30, 12, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC), datetime(2025, 10, 1, tzinfo=UTC))
USAGES = (Usage(), Usage(input_tokens=24_000, output_tokens=450, cache_read_tokens=1_000),
          Usage(input_tokens=300_000, output_tokens=9, reasoning_tokens=5, cache_write_tokens=10,
                cache_write_1h_tokens=5),
          Usage(input_tokens=10, output_tokens=10, web_search_requests=2, input_audio_tokens=3, output_image_tokens=2,
                audio_seconds=7))
VALUES = ("standard", "Standard", " standard", "DEFAULT", "auto", "global", "not_available", "normal", "", None, 0,
          False, 1, True, 1.0, "priority", "flex", "batch", "fast", "us", "eu", "turbo", "regional")
NAMES = ("service_tier", "speed", "inference_geo", "vertex_endpoint", "region")
VARIANTS = (None, "standard", "priority", "flex", "batch", "fast", "bogus")


def differing_fields(a: PriceResult, b: PriceResult) -> list[str]:
    """The fields (every one, compare=False included) where two results differ in value or type."""
    return [f for f in FIELDS if getattr(a, f) != getattr(b, f) or type(getattr(a, f)) is not type(getattr(b, f))]


def modifier_sets(rng: random.Random, n: int) -> list[dict | None]:
    sets: list[dict | None] = [None, {}, *({k: v} for k in NAMES for v in VALUES)]
    sets += [{k: rng.choice(VALUES) for k in rng.sample(NAMES, rng.randint(2, 4))} for _ in range(n)]
    return sets


def catalogue_models() -> list[tuple[str, str]]:
    out = [(p.id, m.id) for p in PRICER.catalogue.providers for m in p.models]
    return out + [(p, m) for p in ("anthropic", "openai", "gemini", "vertex", "bedrock")
                  for m in ("claude-opus-5", "claude-sonnet-4-5", "claude-opus-4-1", "gpt-5", "gemini-2.5-pro", "nope")]


def old_price():
    """Pricer.price as it was before the plain-tier shortcut (fdcb9e7), from the repository's history."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", "fdcb9e7:spendgate/pricing/rates.py"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("the repository's history (fdcb9e7) is not here")
    start = src.index("    def price(\n")
    ns = dict(vars(rates_module))
    exec(textwrap.dedent(src[start:src.index("\ndef reported(", start)]), ns)  # noqa: S102
    return ns["price"]


# -- 1. Pricer.price: a plain tier's result is compute()'s, field for field -------------------------------------------

def test_price_equals_the_old_code_in_every_field_over_the_catalogue():
    """Every catalogue model (1,500+) with random modifiers, usage, day and variant, and three models
    over every combination: the same value and type in every field, late_notes and rates included."""
    old = old_price()
    rng = random.Random(29)
    mods = modifier_sets(rng, 150)
    cases = [(prov, model, rng.choice(mods), rng.choice(USAGES), rng.choice(ATS), rng.choice(VARIANTS))
             for prov, model in catalogue_models() for _ in range(3)]
    three = [("anthropic", "claude-opus-5"), ("openai", "gpt-5"), ("gemini", "gemini-2.5-pro")]
    cases += [(prov, model, md, u, ATS[0], var)
              for (prov, model), md, u, var in itertools.product(three, mods, USAGES[:2], VARIANTS)]
    for prov, model, md, u, at, var in cases:
        new = PRICER.price(prov, model, u, at, var, dict(md) if md else md)
        was = old(PRICER, prov, model, u, at, var, dict(md) if md else md)
        assert not differing_fields(new, was), (prov, model, md, var, differing_fields(new, was))
    assert len(cases) > 10_000


@pytest.mark.parametrize("model", ["claude-opus-5", "claude-sonnet-4-5"])
def test_plain_values_change_no_field_at_all(model):
    """Without the history: plain values (any case, padding aside) price as nothing reported, in
    every field; beside a non-plain one they change nothing either."""
    for at, u, name, value in itertools.product(ATS, USAGES, NAMES, sorted(PLAIN_MODIFIER_VALUES)):
        for shown in (value, value.upper(), value.title()):
            bare = PRICER.price("anthropic", model, u, at)
            assert not differing_fields(PRICER.price("anthropic", model, u, at, modifiers={name: shown}), bare)
            odd = PRICER.price("anthropic", model, u, at, modifiers={"speed": "turbo"})
            both = {"speed": "turbo", **({name: shown} if name != "speed" else {"service_tier": shown})}
            assert not differing_fields(PRICER.price("anthropic", model, u, at, modifiers=both), odd)
            assert odd.late_notes == ("speed turbo: no rate or multiplier is known for it; standard rates used",)


# -- 2. modifiers_json: the cache never answers for another set -------------------------------------------------------

@pytest.mark.parametrize("group", [
    [{"speed": 1}, {"speed": True}, {"speed": 1.0}],
    [{"n": 0}, {"n": False}, {"n": 0.0}, {"n": -0.0}],
    [{1: "x"}, {True: "x"}, {1.0: "x"}],
    [{"a": (1,)}, {"a": (True,)}, {"a": (1.0,)}],
])
def test_equal_cache_keys_with_different_json_are_never_confused(group):
    """1 == 1.0 == True (and 0 == -0.0 == False) hash alike, so ((k, 1),) and ((k, True),) were the
    same lru_cache key: {"speed": true} was written as {"speed": 1}."""
    for order in itertools.permutations(group):
        _encoded_modifiers.cache_clear()
        for mods in order:
            assert modifiers_json(mods) == json.dumps(mods, sort_keys=True), order


def test_a_long_value_is_not_kept_after_its_row():
    """OpenAI's service_tier is not cut: a response's long one was kept in the cache (256 of them)."""
    _encoded_modifiers.cache_clear()
    for i in range(300):
        mods = {"service_tier": f"{i}" + "é" * 20_000, "speed": "fast"}
        assert modifiers_json(mods) == json.dumps(mods, sort_keys=True)
    many = {f"k{i}": "v" for i in range(50)}
    assert modifiers_json(many) == json.dumps(many, sort_keys=True)
    assert _encoded_modifiers.cache_info().currsize == 0
    assert modifiers_json({"service_tier": "standard"}) == '{"service_tier": "standard"}'
    assert _encoded_modifiers.cache_info().currsize == 1  # the provider's short sets still are


def test_random_sets_are_the_sorted_json_whatever_came_before():
    """40,000 random sets (strings with escapes and non-ASCII, numbers, booleans, None, tuples,
    lists, non-string keys) in a random order, through a warm cache: always json.dumps's text."""
    rng = random.Random(2929)
    words = ["standard", "fast", "us", "Priority", "", "é", "\u2028", '"', "\\", "\x00", "𝄞", "a" * 70]
    scalars = [*words, 0, 1, -1, 0.0, -0.0, 1.0, 1.5, True, False, None, 10**20, float(10**20)]
    keys = ["service_tier", "speed", "inference_geo", "vertex_endpoint", "Speed", "é"]
    for i in range(40_000):
        if i % 5000 == 0:
            _encoded_modifiers.cache_clear()
        mods: dict = {}
        for _ in range(rng.randint(1, 4)):
            value = rng.choice(scalars)
            shape = rng.random()
            value = (value,) if shape < 0.1 else [value] if shape < 0.15 else value
            mods[rng.choice(keys) if rng.random() < 0.95 else rng.choice([1, True, 1.0, 0, False])] = value
        try:
            want = json.dumps(mods, sort_keys=True)
        except TypeError:  # mixed key types cannot be sorted: the old code raised too
            with pytest.raises(TypeError):
                modifiers_json(mods)
            continue
        assert modifiers_json(mods) == want, mods


# -- 3. scripts/bench_hooks.py: the worker's wrappers undo themselves -------------------------------------------------

class _Meter:
    def _record(self, *a): return ("recorded", a)
    def build_row(self, *a): return ("row", a)
    def price(self, *a): return ("price", a)


class _Ledger:
    def append(self, row): return row


def _fake_gateway(telemetry_attached: bool = True) -> SimpleNamespace:
    meter, seen = _Meter(), []
    meter.ledger = _Ledger()
    admission = SimpleNamespace(settle=lambda part, row: seen.append(("settle", row)))
    telemetry = SimpleNamespace(on_row=lambda part, row: seen.append(("telemetry", row)))
    meter.listeners = [admission.settle] + ([telemetry.on_row] if telemetry_attached else [])
    return SimpleNamespace(meter=meter, admission=admission, telemetry=telemetry, seen=seen)


def test_the_worker_wrappers_change_nothing_and_undo_everything():
    gw, acc, parse = _fake_gateway(), Counter(), Body.parse
    listeners = list(gw.meter.listeners)
    undo = bench_hooks._time_worker(gw, acc)
    try:
        assert gw.meter._record(1) == ("recorded", (1,)) and gw.meter.price(2) == ("price", (2,))
        for listener in gw.meter.listeners:
            listener("part", "row")
        assert gw.seen == [("settle", "row"), ("telemetry", "row")] and gw.meter.ledger.append("r") == "r"
        assert Body.parse is not parse and {"meter worker, per row", "    pricing", "  telemetry"} <= set(acc)
    finally:
        undo()
    assert Body.parse is parse and gw.meter.listeners == listeners
    assert not {"_record", "build_row", "price"} & set(vars(gw.meter)) and "append" not in vars(gw.meter.ledger)


def test_a_part_that_cannot_be_wrapped_leaves_nothing_wrapped():
    """Telemetry not among the listeners: the wrapping raised with Body.parse (the class's, for the
    whole process) and the meter's methods still wrapped, and run() had no undo to call."""
    gw, parse = _fake_gateway(telemetry_attached=False), Body.parse
    listeners = list(gw.meter.listeners)
    try:
        with pytest.raises(ValueError):
            bench_hooks._time_worker(gw, Counter())
        assert Body.parse is parse
        assert gw.meter.listeners == listeners
        assert not {"_record", "build_row", "price"} & set(vars(gw.meter))
    finally:
        Body.parse = parse
