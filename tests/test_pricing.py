"""Tests for cco_cost_monitor.pricing: tiers, normalisation, price resolution, cost, overrides."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cco_cost_monitor import pricing
from cco_cost_monitor.pricing import (
    ASSUMED_INPUT_SHARE,
    BUILTIN_VERSION,
    LONG_CONTEXT_THRESHOLD,
    TIERS,
    CostEstimate,
    ModelPrice,
    PriceMatch,
    PriceTable,
    normalise_model,
    tier_of,
)

TABLE = PriceTable.default()

# The rows of pricing.md, "Anthropic list prices": input, output, 5m write, 1h write, read.
OPUS_4_5 = (5.0, 25.0, 6.25, 10.0, 0.50)
OPUS = (15.0, 75.0, 18.75, 30.0, 1.50)
SONNET = (3.0, 15.0, 3.75, 6.0, 0.30)
SONNET_LONG = (6.0, 22.50, 7.50, 12.0, 0.60)
HAIKU_4_5 = (1.0, 5.0, 1.25, 2.0, 0.10)
HAIKU_3_5 = (0.80, 4.0, 1.0, 1.60, 0.08)
HAIKU_3 = (0.25, 1.25, 0.30, 0.50, 0.03)
# The original design's tier table (one cache-write price; the 1h one by the 2x rule of thumb).
TIER_OPUS = (15.0, 75.0, 18.75, 30.0, 1.5)
TIER_SONNET = (3.0, 15.0, 3.75, 6.0, 0.3)
TIER_HAIKU = (0.8, 4.0, 1.0, 1.6, 0.08)

FAMILY_ROWS = {
    "claude-opus-4-5": OPUS_4_5,
    "claude-opus-4-1": OPUS,
    "claude-opus-4": OPUS,
    "claude-opus-3": OPUS,
    "claude-sonnet-4-5": SONNET,
    "claude-sonnet-4": SONNET,
    "claude-sonnet-3-7": SONNET,
    "claude-sonnet-3-5": SONNET,
    "claude-haiku-4-5": HAIKU_4_5,
    "claude-haiku-3-5": HAIKU_3_5,
    "claude-haiku-3": HAIKU_3,
}

# Every name of pricing.md's "Model names seen on the wire", plus the published ids:
# (name, tier, matched key, kind of match, row); row None = unpriced.
WIRE_NAMES = [
    ("claude-sonnet-4-5-20250929", "sonnet", "claude-sonnet-4-5-20250929", "exact", SONNET),
    ("claude-opus-4-1-20250805", "opus", "claude-opus-4-1-20250805", "exact", OPUS),
    ("claude-3-5-haiku-20241022", "haiku", "claude-3-5-haiku-20241022", "exact", HAIKU_3_5),
    ("claude-opus-4", "opus", "claude-opus-4", "exact", OPUS),
    ("claude-sonnet-4", "sonnet", "claude-sonnet-4", "exact", SONNET),
    ("claude-sonnet-4.5", "sonnet", "claude-sonnet-4-5", "exact", SONNET),
    ("claude-haiku-4.5", "haiku", "claude-haiku-4-5", "exact", HAIKU_4_5),
    ("claude-3-5-sonnet", "sonnet", "claude-sonnet-3-5", "family", SONNET),
    ("claude-sonnet-3.5", "sonnet", "claude-sonnet-3-5", "exact", SONNET),
    ("claude-sonnet-4-5-20251001", "sonnet", "claude-sonnet-4-5", "family", SONNET),
    ("gpt-4", "other", None, None, None),
    ("ollama/mistral", "other", None, None, None),
    ("deepseek-chat", "other", None, None, None),
    # The published ids and aliases of every family.
    ("claude-opus-4-5-20251101", "opus", "claude-opus-4-5-20251101", "exact", OPUS_4_5),
    ("claude-opus-4-5", "opus", "claude-opus-4-5", "exact", OPUS_4_5),
    ("claude-opus-4-1", "opus", "claude-opus-4-1", "exact", OPUS),
    ("claude-opus-4-20250514", "opus", "claude-opus-4-20250514", "exact", OPUS),
    ("claude-opus-4-0", "opus", "claude-opus-4-0", "exact", OPUS),
    ("claude-3-opus-20240229", "opus", "claude-3-opus-20240229", "exact", OPUS),
    ("claude-3-opus-latest", "opus", "claude-3-opus-latest", "exact", OPUS),
    ("claude-sonnet-4-5", "sonnet", "claude-sonnet-4-5", "exact", SONNET),
    ("claude-sonnet-4-20250514", "sonnet", "claude-sonnet-4-20250514", "exact", SONNET),
    ("claude-sonnet-4-0", "sonnet", "claude-sonnet-4-0", "exact", SONNET),
    ("claude-3-7-sonnet-20250219", "sonnet", "claude-3-7-sonnet-20250219", "exact", SONNET),
    ("claude-3-7-sonnet-latest", "sonnet", "claude-3-7-sonnet-latest", "exact", SONNET),
    ("claude-3-5-sonnet-20240620", "sonnet", "claude-3-5-sonnet-20240620", "exact", SONNET),
    ("claude-3-5-sonnet-20241022", "sonnet", "claude-3-5-sonnet-20241022", "exact", SONNET),
    ("claude-3-5-sonnet-latest", "sonnet", "claude-3-5-sonnet-latest", "exact", SONNET),
    ("claude-haiku-4-5-20251001", "haiku", "claude-haiku-4-5-20251001", "exact", HAIKU_4_5),
    ("claude-3-5-haiku-latest", "haiku", "claude-3-5-haiku-latest", "exact", HAIKU_3_5),
    ("claude-3-haiku-20240307", "haiku", "claude-3-haiku-20240307", "exact", HAIKU_3),
    # Families reached by normalisation: dates, dots, case, old-style order, provider prefixes.
    ("claude-opus-4-5-20260101", "opus", "claude-opus-4-5", "family", OPUS_4_5),
    ("claude-opus-4.5-20251101", "opus", "claude-opus-4-5-20251101", "exact", OPUS_4_5),
    ("Claude-Opus-4.5", "opus", "claude-opus-4-5", "exact", OPUS_4_5),
    ("claude-opus-4.1", "opus", "claude-opus-4-1", "exact", OPUS),
    ("claude-opus-4-1-20991231", "opus", "claude-opus-4-1", "family", OPUS),
    ("claude-opus-4-20991231", "opus", "claude-opus-4", "family", OPUS),
    ("claude-3-opus", "opus", "claude-opus-3", "family", OPUS),
    ("claude-opus-3", "opus", "claude-opus-3", "exact", OPUS),
    ("claude-3.7-sonnet", "sonnet", "claude-sonnet-3-7", "family", SONNET),
    ("claude-3-5-sonnet-v2@20241022", "sonnet", "claude-sonnet-3-5", "family", SONNET),
    ("claude-sonnet-4-5@20250929", "sonnet", "claude-sonnet-4-5", "family", SONNET),
    ("anthropic/claude-sonnet-4.5", "sonnet", "claude-sonnet-4-5", "family", SONNET),
    (
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "sonnet",
        "claude-sonnet-4-5",
        "family",
        SONNET,
    ),
    ("  CLAUDE-HAIKU-4-5  ", "haiku", "claude-haiku-4-5", "exact", HAIKU_4_5),
    ("claude-3-haiku", "haiku", "claude-haiku-3", "family", HAIKU_3),
    ("claude-3-5-haiku", "haiku", "claude-haiku-3-5", "family", HAIKU_3_5),
    ("us.anthropic.claude-opus-4-0-v1", "opus", "claude-opus-4", "family", OPUS),
    # Versions the table does not know fall back to the tier, never to a neighbouring family.
    ("claude-opus-4-7", "opus", "tier:opus", "tier", TIER_OPUS),
    ("claude-opus-4-10", "opus", "tier:opus", "tier", TIER_OPUS),
    ("claude-opus-4o", "opus", "tier:opus", "tier", TIER_OPUS),
    ("claude-sonnet-5", "sonnet", "tier:sonnet", "tier", TIER_SONNET),
    ("my-haiku-finetune", "haiku", "tier:haiku", "tier", TIER_HAIKU),
    # Unpriced.
    ("claude-instant-1", "other", None, None, None),
    ("claude-2", "other", None, None, None),
    ("", "other", None, None, None),
]


def test_all_names_public_api() -> None:
    """``__all__`` lists exactly the public names the module defines."""
    public = {
        name
        for name, value in vars(pricing).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == pricing.__name__
    }
    assert public <= set(pricing.__all__)
    assert all(hasattr(pricing, name) for name in pricing.__all__)


# --- tiers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "tier"),
    [
        ("claude-opus-4", "opus"),
        ("CLAUDE-SONNET-4", "sonnet"),
        ("Haiku", "haiku"),
        ("sonnet-opus-haiku", "opus"),
        ("haiku-sonnet", "sonnet"),
        ("gpt-4", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_tier_of_examples(model: str | None, tier: str) -> None:
    """The tier is the first of opus, sonnet, haiku found in the name, case-insensitively."""
    assert tier_of(model) == tier


@given(st.text())
def test_tier_of_matches_reference(model: str) -> None:
    """tier_of is the substring test of the original design, in the order opus, sonnet, haiku."""
    lowered = model.lower()
    expected = next((t for t in ("opus", "sonnet", "haiku") if t in lowered), "other")
    assert tier_of(model) == expected
    assert tier_of(model) in TIERS


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_tier_of_ignores_case(model: str) -> None:
    """Upper- and lower-case spellings of a name have the same tier."""
    assert tier_of(model.upper()) == tier_of(model.lower()) == tier_of(model)


@given(st.text())
def test_opus_sonnet_haiku_names_are_never_unpriced(model: str) -> None:
    """Every name with an opus, sonnet or haiku tier gets a price from the default table."""
    found = TABLE.match(model)
    if tier_of(model) != "other":
        assert found is not None
    if found is not None and found.matched_by == "tier":
        assert found.key == f"tier:{tier_of(model)}"


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "normal"),
    [
        ("claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("  Claude-Sonnet-4.5-20250929\n", "claude-sonnet-4-5"),
        ("claude-3.5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-2025092", "claude-sonnet-4-5-2025092"),
        ("gpt-4.1", "gpt-4-1"),
        ("v.1", "v.1"),
        ("ollama/mistral", "ollama/mistral"),
        ("x-20250101 -20250101", "x"),
    ],
)
def test_normalise_examples(model: str, normal: str) -> None:
    """Case, whitespace, dates and dots between digits disappear; everything else stays."""
    assert normalise_model(model) == normal


@given(st.text())
def test_normalise_is_idempotent(model: str) -> None:
    """Normalising a normalised name changes nothing."""
    once = normalise_model(model)
    assert normalise_model(once) == once


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_normalise_ignores_case(model: str) -> None:
    """Names that differ only in case normalise alike."""
    assert normalise_model(model.upper()) == normalise_model(model.lower())
    assert normalise_model(model.swapcase()) == normalise_model(model)


@given(st.text(), st.from_regex(r"[0-9]{8}", fullmatch=True), st.sampled_from("-@"))
def test_normalise_ignores_date_suffix(model: str, date: str, sep: str) -> None:
    """A trailing 8-digit date suffix does not change the normalised name."""
    assert normalise_model(f"{model}{sep}{date}") == normalise_model(model)


version_part = st.from_regex(r"[0-9]{1,3}", fullmatch=True)


@given(
    st.text(alphabet=st.characters(max_codepoint=127)),
    st.lists(version_part, min_size=2, max_size=4),
    st.text(alphabet=st.characters(max_codepoint=127)),
)
def test_normalise_treats_dot_and_dash_between_digits_alike(
    prefix: str, parts: list[str], suffix: str
) -> None:
    """Version numbers written with dots or with dashes normalise alike."""
    dotted = prefix + ".".join(parts) + suffix
    dashed = prefix + "-".join(parts) + suffix
    assert normalise_model(dotted) == normalise_model(dashed)


@given(st.text())
def test_normalise_output_shape(model: str) -> None:
    """A normalised name is lower-case, stripped and has no trailing date."""
    normal = normalise_model(model)
    assert normal == normal.lower()
    assert normal == normal.strip()
    assert pricing._DATE_SUFFIX.search(normal) is None


# --- resolution ----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "tier", "key", "kind", "row"), WIRE_NAMES)
def test_wire_names_resolve(
    model: str, tier: str, key: str | None, kind: str | None, row: tuple[float, ...] | None
) -> None:
    """Each model name seen on the wire gets the right tier, price, matched key and match kind."""
    assert tier_of(model) == tier
    found = TABLE.match(model)
    if row is None:
        assert found is None
        return
    assert found is not None
    assert (found.key, found.matched_by, found.price.as_tuple()) == (key, kind, row)


def test_match_none_is_unpriced() -> None:
    """A missing model name is unpriced."""
    assert TABLE.match(None) is None


def test_builtin_rows_are_the_list_prices() -> None:
    """Every family of the built-in table carries its row of pricing.md."""
    entries = TABLE.entries()
    for family, row in FAMILY_ROWS.items():
        assert entries[family].as_tuple() == row
    assert entries["tier:opus"].as_tuple() == TIER_OPUS
    assert entries["tier:sonnet"].as_tuple() == TIER_SONNET
    assert entries["tier:haiku"].as_tuple() == TIER_HAIKU
    assert "tier:other" not in entries


def test_opus_4_5_is_not_priced_as_opus_4() -> None:
    """Opus 4.5 costs $5/$25 while Opus 4.1 and 4 cost $15/$75, in every spelling."""
    for model in (
        "claude-opus-4-5",
        "claude-opus-4.5",
        "claude-opus-4-5-20251101",
        "claude-4-5-opus",
    ):
        found = TABLE.match(model)
        assert found is not None
        assert (found.price.input, found.price.output) == (5.0, 25.0)
    for model in ("claude-opus-4-1-20250805", "claude-opus-4-1-20991231", "claude-opus-4.1"):
        found = TABLE.match(model)
        assert found is not None
        assert found.key.startswith("claude-opus-4-1")


def test_long_context_rows() -> None:
    """Only Sonnet 4 and 4.5 have a long-context row, and it is pricing.md's higher row."""
    long_rows = TABLE.long_context_entries()
    assert long_rows
    for key, price in long_rows.items():
        assert pricing._claude_family(key) in {"claude-sonnet-4", "claude-sonnet-4-5"}
        assert price.as_tuple() == SONNET_LONG
    for model in ("claude-3-7-sonnet-20250219", "claude-opus-4", "claude-haiku-4-5", "sonnet"):
        found = TABLE.match(model)
        assert found is not None
        assert found.long_context is None


def test_every_entry_matches_itself_exactly() -> None:
    """Each key of the table resolves to itself as an exact match with its own price."""
    for key, price in TABLE.entries().items():
        found = TABLE.match(key)
        assert found is not None
        assert found.price == price
        assert found.key == key
        assert found.matched_by == ("tier" if key.startswith("tier:") else "exact")


def _respell(draw: st.DrawFn, key: str) -> str:
    """A spelling of ``key`` that differs in case, dots between digits, whitespace and date."""
    chars = [c.upper() if draw(st.booleans()) else c for c in key]
    spelled = "".join(chars)
    if draw(st.booleans()):
        spelled = re.sub(r"(?<=[0-9])-(?=[0-9])", ".", spelled)
    if draw(st.booleans()):
        spelled += "-" + draw(st.from_regex(r"[0-9]{8}", fullmatch=True))
    return draw(st.sampled_from(["", " ", "\t"])) + spelled + draw(st.sampled_from(["", " "]))


@st.composite
def respelled_entries(draw: st.DrawFn) -> tuple[str, str]:
    key = draw(st.sampled_from([k for k in TABLE.entries() if not k.startswith("tier:")]))
    return key, _respell(draw, key)


@given(respelled_entries())
def test_spelling_never_changes_the_price(case: tuple[str, str]) -> None:
    """Case, whitespace, a date suffix and dots for dashes never change a model's price."""
    key, spelled = case
    found = TABLE.match(spelled)
    assert found is not None
    assert found.price == TABLE.entries()[key]
    assert found.matched_by in ("exact", "family")


# --- cost ----------------------------------------------------------------------------------

token_count = st.integers(min_value=0, max_value=2_000_000)
small_count = st.integers(min_value=0, max_value=25_000)  # 8 x 25k = the threshold
priced_model = st.sampled_from(sorted(TABLE.entries()))
unpriced_model = st.sampled_from(["gpt-4", "ollama/mistral", "deepseek-chat", "", "claude-2"])


def _cost(model: str, counts: tuple[int, int, int, int, int]) -> CostEstimate:
    estimate = TABLE.cost(
        model,
        input_tokens=counts[0],
        output_tokens=counts[1],
        cache_write_5m_tokens=counts[2],
        cache_write_1h_tokens=counts[3],
        cache_read_tokens=counts[4],
    )
    assert estimate is not None
    return estimate


counts5 = st.tuples(token_count, token_count, token_count, token_count, token_count)
small5 = st.tuples(small_count, small_count, small_count, small_count, small_count)


def test_cost_examples() -> None:
    """A million tokens of each kind cost the listed price of that kind."""
    million = 1_000_000
    est = TABLE.cost("claude-opus-4-5", input_tokens=million, output_tokens=0)
    assert est is not None
    assert est.usd == 5.0
    est = TABLE.cost("claude-opus-4-1", input_tokens=0, output_tokens=million)
    assert est is not None
    assert est.usd == 75.0
    est = TABLE.cost(
        "claude-haiku-4-5",
        input_tokens=100_000,
        output_tokens=100_000,
        cache_write_5m_tokens=0,
        cache_write_1h_tokens=0,
        cache_read_tokens=1_000_000,
    )
    assert est is not None
    assert math.isclose(est.usd, 0.1 + 0.5 + 0.1)
    assert est == CostEstimate(
        usd=est.usd,
        matched_by="exact",
        key="claude-haiku-4-5",
        table_version=BUILTIN_VERSION,
        estimated_split=False,
        long_context=False,
    )


def test_cost_of_fixture_event_matches_proxy() -> None:
    """The fixture's 1,000 in + 500 out on claude-sonnet-4 costs the proxy's $0.0105."""
    est = TABLE.cost("claude-sonnet-4", input_tokens=1000, output_tokens=500)
    assert est is not None
    assert math.isclose(est.usd, 0.0105)


@given(priced_model, counts5)
def test_cost_is_non_negative(model: str, counts: tuple[int, int, int, int, int]) -> None:
    """A cost is never negative, and zero tokens cost nothing."""
    assert _cost(model, counts).usd >= 0
    assert _cost(model, (0, 0, 0, 0, 0)).usd == 0


@given(priced_model, small5, small5)
def test_cost_is_linear_below_long_context(
    model: str, a: tuple[int, int, int, int, int], b: tuple[int, int, int, int, int]
) -> None:
    """Below the long-context threshold the cost of two requests' tokens is the sum of costs."""
    both = tuple(x + y for x, y in zip(a, b, strict=True))
    assert sum(both) - both[1] <= LONG_CONTEXT_THRESHOLD
    total = _cost(model, both).usd  # type: ignore[arg-type]
    assert math.isclose(total, _cost(model, a).usd + _cost(model, b).usd, abs_tol=1e-12)


@given(st.sampled_from(["claude-opus-4-5", "claude-3-7-sonnet", "gpt-x-haiku"]), counts5)
def test_cost_scales_with_tokens(model: str, counts: tuple[int, int, int, int, int]) -> None:
    """Without a long-context row, k times the tokens cost k times as much."""
    tripled = tuple(3 * n for n in counts)
    tripled_cost = _cost(model, tripled).usd  # type: ignore[arg-type]
    assert math.isclose(tripled_cost, 3 * _cost(model, counts).usd, rel_tol=1e-12)


@given(priced_model, counts5, st.integers(min_value=0, max_value=4), token_count)
def test_cost_is_monotone(
    model: str, counts: tuple[int, int, int, int, int], which: int, more: int
) -> None:
    """More tokens of any kind never cost less, even across the long-context threshold."""
    bigger = list(counts)
    bigger[which] += more
    assert _cost(model, tuple(bigger)).usd >= _cost(model, counts).usd  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-sonnet-4", "sonnet-4.5"])
def test_long_context_switch_at_200k(model: str) -> None:
    """Sonnet 4/4.5 prompts above 200k tokens, cache included, use the long-context row."""
    model = model if model.startswith("claude") else "claude-" + model
    at = TABLE.cost(model, input_tokens=LONG_CONTEXT_THRESHOLD, output_tokens=1_000_000)
    above = TABLE.cost(model, input_tokens=LONG_CONTEXT_THRESHOLD + 1, output_tokens=1_000_000)
    assert at is not None
    assert above is not None
    assert not at.long_context
    assert above.long_context
    assert math.isclose(at.usd, 0.6 + 15.0)
    assert math.isclose(above.usd, (LONG_CONTEXT_THRESHOLD + 1) * 6.0 / 1e6 + 22.5)
    cached = TABLE.cost(
        model,
        input_tokens=1,
        output_tokens=0,
        cache_write_5m_tokens=50_000,
        cache_write_1h_tokens=50_000,
        cache_read_tokens=100_000,
    )
    assert cached is not None
    assert cached.long_context
    assert math.isclose(cached.usd, (6.0 + 50_000 * (7.5 + 12.0) + 100_000 * 0.6) / 1e6)


def test_output_does_not_count_toward_long_context() -> None:
    """A long answer to a short prompt is charged at the normal row."""
    est = TABLE.cost("claude-sonnet-4-5", input_tokens=10, output_tokens=900_000)
    assert est is not None
    assert not est.long_context


@pytest.mark.parametrize("model", ["claude-3-7-sonnet", "claude-opus-4-5", "claude-sonnet-9"])
def test_no_long_context_elsewhere(model: str) -> None:
    """Models without a long-context row keep their price above 200k prompt tokens."""
    est = TABLE.cost(model, input_tokens=1_000_000, output_tokens=0)
    assert est is not None
    assert not est.long_context
    found = TABLE.match(model)
    assert found is not None
    assert est.usd == found.price.input


@given(unpriced_model, counts5)
def test_unpriced_costs_none(model: str, counts: tuple[int, int, int, int, int]) -> None:
    """An unpriced model has no cost at all, rather than $0."""
    assert TABLE.match(model) is None
    assert TABLE.cost(model, input_tokens=counts[0], output_tokens=counts[1]) is None
    assert TABLE.cost_combined(model, counts[0]) is None
    assert TABLE.cost(None, input_tokens=counts[0], output_tokens=counts[1]) is None


@pytest.mark.parametrize(
    "field",
    [
        "input_tokens",
        "output_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "cache_read_tokens",
    ],
)
def test_negative_tokens_rejected(field: str) -> None:
    """A negative token count is a bug upstream and raises ValueError."""
    counts = {"input_tokens": 1, "output_tokens": 1, field: -1}
    with pytest.raises(ValueError, match="must be >= 0"):
        TABLE.cost("claude-opus-4", **counts)
    with pytest.raises(ValueError, match="must be >= 0"):
        TABLE.cost_combined("claude-opus-4", -1)


# --- combined counts -----------------------------------------------------------------------


# Combined counts around the long-context threshold, where the split decides the row.
combined_tokens = st.integers(min_value=0, max_value=5_000_000) | st.integers(
    min_value=LONG_CONTEXT_THRESHOLD, max_value=2 * LONG_CONTEXT_THRESHOLD
)


@example("claude-sonnet-4-5", 5_000_000)
@example("claude-sonnet-4", 1_000_000)
@example("claude-sonnet-4", 200_001)
@example("claude-sonnet-4", 210_000)
@example("claude-sonnet-4", 266_666)
@example("claude-sonnet-4", 266_667)
@example("claude-sonnet-4", 266_668)
@given(priced_model, combined_tokens)
def test_cost_combined_is_a_flagged_estimate_between_extremes(model: str, tokens: int) -> None:
    """A combined count is flagged as estimated and costs between all-input and all-output."""
    est = TABLE.cost_combined(model, tokens)
    assert est is not None
    assert est.estimated_split
    all_input = _cost(model, (tokens, 0, 0, 0, 0)).usd
    all_output = _cost(model, (0, tokens, 0, 0, 0)).usd
    low, high = min(all_input, all_output), max(all_input, all_output)
    assert low * (1 - 1e-12) <= est.usd <= high * (1 + 1e-12)


@given(priced_model, st.integers(min_value=0, max_value=5_000_000))
def test_cost_combined_uses_the_assumed_split(model: str, tokens: int) -> None:
    """The estimate is the cost of the assumed split, input rounded down."""
    est = TABLE.cost_combined(model, tokens)
    input_tokens = math.floor(tokens * ASSUMED_INPUT_SHARE)
    exact = _cost(model, (input_tokens, tokens - input_tokens, 0, 0, 0))
    assert est is not None
    assert est.usd == exact.usd
    assert (est.key, est.matched_by, est.long_context) == (
        exact.key,
        exact.matched_by,
        exact.long_context,
    )


def test_assumed_split_is_a_share() -> None:
    """The assumed input share is a fraction strictly between 0 and 1."""
    assert 0 < ASSUMED_INPUT_SHARE < 1


# --- overrides and versions ----------------------------------------------------------------


def test_default_version_and_fingerprint_are_pinned() -> None:
    """The built-in table has a fixed version; changing a built-in price must change it too."""
    assert TABLE.version == BUILTIN_VERSION == "builtin-2025-11"
    assert TABLE.fingerprint() == (
        "6126d5e69485e4457f2a34a106d5c751dba695812e4ef58667a96aab9fce962d"
    )
    assert PriceTable.default().fingerprint() == TABLE.fingerprint()


def test_overrides_change_version_and_prices() -> None:
    """A price override gives a new version derived from the contents, and the new price."""
    table = TABLE.with_overrides({"claude-sonnet-4.5": {"input": 2, "output": 10}})
    assert table.version.startswith(BUILTIN_VERSION + "+")
    assert table.version != TABLE.version
    for model in ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20251001"):
        found = table.match(model)
        assert found is not None
        assert found.price.as_tuple() == (2.0, 10.0, 2.5, 4.0, 0.2)
        assert found.long_context is not None
        assert found.long_context.as_tuple() == (4.0, 15.0, 5.0, 8.0, 0.4)
        est = table.cost(model, input_tokens=1_000_000, output_tokens=0)
        assert est is not None
        assert est.table_version == table.version
    assert table.entries()["claude-sonnet-4"] == TABLE.entries()["claude-sonnet-4"]
    assert TABLE.entries()["claude-sonnet-4-5"].input == 3.0


def test_override_spelling_does_not_change_version() -> None:
    """Overrides that price the same version alike; different prices differ."""
    a = TABLE.with_overrides({"claude-sonnet-4.5": {"input": 2, "output": 10}})
    b = TABLE.with_overrides(
        {
            "Claude-Sonnet-4-5": {
                "input": 2.0,
                "output": 10.0,
                "cache_write_5m": 2.5,
                "cache_write_1h": 4,
                "cache_read": 0.2,
            }
        }
    )
    c = TABLE.with_overrides({"claude-sonnet-4.5": {"input": 2, "output": 11}})
    assert a.version == b.version != c.version
    assert TABLE.with_overrides({}).version == BUILTIN_VERSION
    same = TABLE.with_overrides({"claude-opus-4-5": {"input": 5, "output": 25}})
    assert same.version == BUILTIN_VERSION


@given(
    st.floats(min_value=0, max_value=1000, allow_nan=False),
    st.floats(min_value=0, max_value=1000, allow_nan=False),
)
def test_override_version_tracks_prices(input_price: float, output_price: float) -> None:
    """Two override tables have the same version exactly when they price everything alike."""
    a = TABLE.with_overrides({"deepseek-chat": {"input": input_price, "output": output_price}})
    b = TABLE.with_overrides({"deepseek-chat": {"input": input_price, "output": output_price}})
    c = TABLE.with_overrides({"deepseek-chat": {"input": input_price + 1, "output": output_price}})
    assert a.version == b.version != c.version


def test_override_names_a_new_model() -> None:
    """An override for a non-Anthropic model makes it priced, by name and dated variants."""
    table = TABLE.with_overrides(
        {
            "gpt-4": {"input": 30, "output": 60, "cache_read": 0},
            "ollama/mistral": {"input": 0, "output": 0},
        }
    )
    found = table.match("GPT-4")
    assert found is not None
    assert (found.matched_by, found.key) == ("exact", "gpt-4")
    assert found.price.as_tuple() == (30.0, 60.0, 37.5, 60.0, 0.0)
    dated = table.match("gpt-4-20240101")
    assert dated is not None
    assert (dated.matched_by, dated.key) == ("family", "gpt-4")
    assert table.match("gpt-4o") is None
    assert table.match("deepseek-chat") is None
    free = table.cost("ollama/mistral", input_tokens=10_000, output_tokens=10_000)
    assert free is not None
    assert free.usd == 0.0


def test_override_of_a_published_id_prices_that_id_alone() -> None:
    """Overriding a dated id leaves the rest of its family at list price."""
    table = TABLE.with_overrides({"claude-opus-4-1-20250805": {"input": 1, "output": 2}})
    found = table.match("claude-opus-4-1-20250805")
    assert found is not None
    assert found.price.input == 1.0
    family = table.match("claude-opus-4-1")
    assert family is not None
    assert family.price.as_tuple() == OPUS


def test_override_of_an_alias_prices_that_alias_alone() -> None:
    """``claude-sonnet-4-0`` is a published alias: overriding it leaves Sonnet 4 alone."""
    table = TABLE.with_overrides({"claude-sonnet-4-0": {"input": 1, "output": 2}})
    alias = table.match("claude-sonnet-4.0")
    family = table.match("claude-sonnet-4")
    assert alias is not None
    assert family is not None
    assert (alias.key, alias.price.input) == ("claude-sonnet-4-0", 1.0)
    assert family.price.as_tuple() == SONNET


def test_override_of_old_style_family_and_new_family() -> None:
    """Old-style family names set the family; a new version becomes a family of its own."""
    table = TABLE.with_overrides(
        {
            "claude-3-5-sonnet": {"input": 1, "output": 1},
            "claude-opus-4.7": {"input": 4, "output": 20},
        }
    )
    for model in ("claude-sonnet-3.5", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest"):
        found = table.match(model)
        assert found is not None
        assert found.price.input == 1.0
    opus = table.match("claude-opus-4-7-20260101")
    assert opus is not None
    assert (opus.matched_by, opus.key, opus.price.output) == ("family", "claude-opus-4-7", 20.0)


def test_override_of_a_tier() -> None:
    """``tier:<name>`` sets the fallback price of that tier."""
    table = TABLE.with_overrides({"tier:Sonnet": {"input": 1, "output": 2}})
    found = table.match("claude-sonnet-9")
    assert found is not None
    assert (found.key, found.price.input) == ("tier:sonnet", 1.0)


def test_overrides_do_not_mutate_the_original() -> None:
    """A table is immutable: with_overrides returns a new one."""
    before = TABLE.entries()
    TABLE.with_overrides(
        {"claude-opus-4": {"input": 1, "output": 1}, "gpt-4": {"input": 1, "output": 1}}
    )
    assert TABLE.entries() == before
    assert TABLE.match("gpt-4") is None


def test_overrides_stack() -> None:
    """Overrides applied in two steps give the same table as in one step."""
    one = TABLE.with_overrides(
        {"gpt-4": {"input": 1, "output": 2}, "claude-opus-4": {"input": 3, "output": 4}}
    )
    two = TABLE.with_overrides({"gpt-4": {"input": 1, "output": 2}}).with_overrides(
        {"claude-opus-4": {"input": 3, "output": 4}}
    )
    assert one.version == two.version
    assert one.entries() == two.entries()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"claude-opus-4": {"input": -1, "output": 1}}, "input must be a finite number"),
        ({"claude-opus-4": {"input": 1, "output": math.nan}}, "output must be a finite number"),
        ({"claude-opus-4": {"input": 1, "output": math.inf}}, "output must be a finite number"),
        ({"claude-opus-4": {"input": 1, "output": 1, "cache_read": -0.1}}, "cache_read"),
        ({"claude-opus-4": {"input": 1e308, "output": 1}}, "cache_write_1h must be a finite"),
        ({"claude-sonnet-4": {"input": 1, "output": 1.7e308}}, "output must be a finite"),
        ({"claude-opus-4": {"input": True, "output": 1}}, "input must be a number"),
        ({"claude-opus-4": {"input": "3", "output": 1}}, "input must be a number"),
        ({"claude-opus-4": {"input": 1, "output": 1, "cache_write": 1}}, "unknown field"),
        ({"claude-opus-4": {"input": 1}}, "missing output"),
        ({"claude-opus-4": {}}, "missing input and output"),
        ({"claude-opus-4": 3.0}, "expected a table of prices"),
        ({"tier:other": {"input": 1, "output": 1}}, "unknown tier"),
        ({"  ": {"input": 1, "output": 1}}, "non-empty string"),
    ],
)
def test_bad_overrides_name_the_key(overrides: Mapping[str, object], message: str) -> None:
    """Invalid override values raise ValueError naming the offending key and what is wrong."""
    (key,) = overrides
    with pytest.raises(ValueError, match=message) as info:
        TABLE.with_overrides(overrides)  # type: ignore[arg-type]
    assert repr(key) in str(info.value)


def test_two_overrides_for_one_entry_rejected() -> None:
    """Two spellings of the same entry in one config are ambiguous and name both keys."""
    with pytest.raises(ValueError, match="both name 'claude-sonnet-4-5'") as info:
        TABLE.with_overrides(
            {
                "claude-sonnet-4.5": {"input": 1, "output": 1},
                "claude-sonnet-4-5": {"input": 2, "output": 2},
            }
        )
    assert "'claude-sonnet-4.5'" in str(info.value)


# --- ModelPrice ----------------------------------------------------------------------------


def test_model_price_rules_of_thumb() -> None:
    """Missing cache prices are 1.25x, 2x and 0.1x input, without float noise."""
    assert ModelPrice.from_rates(3, 15).as_tuple() == SONNET
    assert ModelPrice.from_rates(15, 75).as_tuple() == OPUS
    assert ModelPrice.from_rates(5, 25).as_tuple() == OPUS_4_5
    assert ModelPrice.from_rates(0.8, 4, cache_write_1h=1.6).as_tuple() == HAIKU_3_5
    assert ModelPrice.from_rates(1, 2, cache_read=0).cache_read == 0.0


@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6))
def test_model_price_derivations_are_non_negative(input_price: float, output_price: float) -> None:
    """Derived cache and long-context prices are finite, non-negative and not below the base."""
    price = ModelPrice.from_rates(input_price, output_price)
    long_row = price.long_context()
    for base, high in zip(price.as_tuple(), long_row.as_tuple(), strict=True):
        assert 0 <= base <= high
        assert math.isfinite(high)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_model_price_rejects_bad_values(bad: float) -> None:
    """A price must be a finite number >= 0."""
    with pytest.raises(ValueError, match="output must be a finite number"):
        ModelPrice(1, bad, 1, 1, 1)
    with pytest.raises(ValueError, match="input must be a finite number"):
        ModelPrice.from_rates(bad, 1)


@pytest.mark.parametrize("bad", [True, "3", None])
def test_model_price_rejects_non_numbers(bad: object) -> None:
    """A price must be a real number: not a bool, a string or None."""
    with pytest.raises(ValueError, match="cache_read must be a number"):
        ModelPrice(1, 1, 1, 1, bad)  # type: ignore[arg-type]


def test_model_price_normalises_numbers() -> None:
    """Integer and negative-zero prices are stored as plain floats."""
    price = ModelPrice(3, -0.0, 0, 0, 0)
    assert price.as_tuple() == (3.0, 0.0, 0.0, 0.0, 0.0)
    assert all(type(v) is float for v in price.as_tuple())
    assert math.copysign(1, price.output) == 1


def test_match_reports_long_context_row() -> None:
    """A PriceMatch carries the long-context row of Sonnet 4.5 and none for Haiku."""
    found = TABLE.match("claude-sonnet-4-5")
    assert isinstance(found, PriceMatch)
    assert found.long_context is not None
    haiku = TABLE.match("claude-haiku-4-5")
    assert haiku is not None
    assert haiku.long_context is None


def test_entries_are_for_display() -> None:
    """entries() lists families, published ids and tiers with their resolved prices."""
    entries = TABLE.entries()
    assert set(FAMILY_ROWS) <= set(entries)
    for _name, _tier, key, kind, row in WIRE_NAMES:
        if kind == "exact":
            assert key is not None
            assert entries[key].as_tuple() == row
    assert [k for k in entries if k.startswith("tier:")] == [
        "tier:opus",
        "tier:sonnet",
        "tier:haiku",
    ]
    assert repr(TABLE).startswith("<PriceTable builtin-2025-11")


@given(
    st.sampled_from(
        ["claude-sonnet-4", "claude-opus-4-1-20250805", "claude-3-5-haiku", "gpt-4", None]
    ),
    st.integers(0, 2_000_000),
)
def test_combined_usd_is_cost_combined_exactly(model: str | None, tokens: int) -> None:
    """The hot-path combined_usd gives bit for bit the usd of cost_combined."""
    table = PriceTable.default()
    estimate = table.cost_combined(model, tokens)
    fast = table.combined_usd(model, tokens)
    assert fast == (estimate.usd if estimate is not None else None)
