"""Price tables, model-name normalisation and tiers: what a token costs.

This module owns the answer to "what did this request cost at list prices?":

- ``tier_of`` puts a model into one of the four reporting tiers;
- ``normalise_model`` turns the many spellings of a model id into one;
- ``PriceTable`` holds USD-per-million-token prices (the built-in Anthropic list prices of late
  2025, optionally overridden from the config file), resolves a model name to a price and
  computes a cost. Its ``version`` is stored with everything computed from it.

A model is resolved in this order, and the kind of match is reported with the price:

1. ``exact``  -- the name itself (ignoring case, surrounding whitespace, and ``.``/``-`` between
   digits) is a key of the table: a published id (``claude-sonnet-4-5-20250929``), a family
   (``claude-sonnet-4-5``, ``claude-sonnet-3-5``) or a model named by an override (``gpt-4``);
2. ``family`` -- after dropping a date suffix and reading old-style names
   (``claude-3-5-sonnet`` is ``claude-sonnet-3-5``), the name belongs to a priced family;
3. ``tier``   -- the tier prices of the original cost-monitor design, for opus/sonnet/haiku only;
4. otherwise the model is **unpriced**: ``None``, never a silent $0.

Pure logic: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal, TypeAlias

__all__ = [
    "ASSUMED_INPUT_SHARE",
    "BUILTIN_VERSION",
    "LONG_CONTEXT_THRESHOLD",
    "TIERS",
    "CostEstimate",
    "MatchKind",
    "ModelPrice",
    "PriceMatch",
    "PriceTable",
    "Tier",
    "normalise_model",
    "tier_of",
]

Tier: TypeAlias = Literal["opus", "sonnet", "haiku", "other"]
TIERS: Final[tuple[Tier, ...]] = ("opus", "sonnet", "haiku", "other")
MatchKind: TypeAlias = Literal["exact", "family", "tier"]

#: Version of the built-in table; change it whenever a built-in price changes.
BUILTIN_VERSION: Final = "builtin-2025-11"

#: Sonnet 4 and 4.5 charge the long-context row when the prompt (input plus cache writes and
#: reads, as Anthropic counts it) exceeds this many tokens. Output does not count.
LONG_CONTEXT_THRESHOLD: Final = 200_000

#: Share of a combined input+output count assumed to be input when no split is known (the CCO
#: stream's ``tokens``). Agent traffic is usually more input-heavy than 3:1; since output costs
#: 5x input, assuming more output than is likely makes the estimate err high, the safe side for
#: a budget. The input part is rounded down, for the same reason.
MATCH_CACHE_SIZE: Final = 1024
ASSUMED_INPUT_SHARE: Final = 0.75

_FIELDS: Final = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_TIER_PREFIX: Final = "tier:"
_PRICED_TIERS: Final[tuple[Tier, ...]] = ("opus", "sonnet", "haiku")
_LONG_CONTEXT_FAMILIES: Final = frozenset({"claude-sonnet-4-5", "claude-sonnet-4"})


def tier_of(model: str | None) -> Tier:
    """Return the reporting tier: the first of opus, sonnet, haiku found in the name, else other."""
    if model is None:
        return "other"
    lowered = model.lower()
    for tier in _PRICED_TIERS:
        if tier in lowered:
            return tier
    return "other"


_DOT_BETWEEN_DIGITS: Final = re.compile(r"(?<=[0-9])\.(?=[0-9])")
# "-20250929" (Anthropic) or "@20250929" (Vertex AI) at the very end.
_DATE_SUFFIX: Final = re.compile(r"[-@][0-9]{8}$")
_FAMILY_NAMES: Final = "opus|sonnet|haiku"
_NEW_STYLE: Final = re.compile(
    rf"(?<![a-z0-9])claude-(?P<fam>{_FAMILY_NAMES})-(?P<major>[0-9]{{1,2}})"
    r"(?:-(?P<minor>[0-9]{1,2}))?(?![a-z0-9])"
)
_OLD_STYLE: Final = re.compile(
    r"(?<![a-z0-9])claude-(?P<major>[0-9]{1,2})(?:-(?P<minor>[0-9]{1,2}))?"
    rf"-(?P<fam>{_FAMILY_NAMES})(?![a-z0-9])"
)


def _canonical(model: str) -> str:
    """Spell a name one way but keep its date: lower-case, stripped, ``4.5`` written ``4-5``."""
    return _DOT_BETWEEN_DIGITS.sub("-", model.strip().lower())


def normalise_model(model: str) -> str:
    """Return the canonical name: lower-case, stripped, ``.`` as ``-`` between digits, no date.

    ``"Claude-Sonnet-4.5"`` and ``"claude-sonnet-4-5-20250929"`` both give ``"claude-sonnet-4-5"``.
    Old-style names keep their word order here; family resolution reads both orders.
    """
    name = _canonical(model)
    # Repeat until stable so that the result is idempotent ("x-20250101 -20250101").
    while True:
        shorter = _DATE_SUFFIX.sub("", name).strip()
        if shorter == name:
            return name
        name = shorter


def _claude_family(name: str, *, whole: bool = False) -> str | None:
    """The family key (``claude-<family>-<major>[-<minor>]``) a normalised name belongs to.

    The version is read in full, so ``claude-opus-4-1`` is never taken for ``claude-opus-4`` and
    an unknown ``claude-opus-4-7`` is not priced as Opus 4. A minor version ``0`` is dropped
    (``claude-opus-4-0`` is Opus 4). With ``whole``, the name must be nothing but the family.
    """
    for pattern in (_NEW_STYLE, _OLD_STYLE):
        found = pattern.fullmatch(name) if whole else pattern.search(name)
        if found is not None:
            minor = found["minor"]
            suffix = f"-{minor}" if minor is not None and minor != "0" else ""
            return f"claude-{found['fam']}-{found['major']}{suffix}"
    return None


def _checked(name: str, value: object) -> float:
    """``value`` as a price: a finite number >= 0, as a float without a negative zero."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    # Equal prices must serialise alike for the fingerprint: 3 -> 3.0, -0.0 -> 0.0.
    return float(value) + 0.0


def _times(value: float, factor: str) -> float:
    """``value * factor`` in decimal, so that 0.1 x 3 is 0.3 and not 0.30000000000000004."""
    return float(Decimal(repr(value)) * Decimal(factor))


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in USD per million tokens; each a finite number >= 0."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float

    def __post_init__(self) -> None:
        for name in _FIELDS:
            object.__setattr__(self, name, _checked(name, getattr(self, name)))

    @classmethod
    def from_rates(
        cls,
        input: float,
        output: float,
        *,
        cache_write_5m: float | None = None,
        cache_write_1h: float | None = None,
        cache_read: float | None = None,
    ) -> ModelPrice:
        """Build a price; missing cache prices follow the rules of thumb (1.25x, 2x, 0.1x input)."""
        base = _checked("input", input)  # checked before anything is derived from it
        return cls(
            input=base,
            output=output,
            cache_write_5m=_times(base, "1.25") if cache_write_5m is None else cache_write_5m,
            cache_write_1h=_times(base, "2") if cache_write_1h is None else cache_write_1h,
            cache_read=_times(base, "0.1") if cache_read is None else cache_read,
        )

    def long_context(self) -> ModelPrice:
        """The long-context row derived from this one: input-side prices x2, output x1.5."""
        return ModelPrice(
            input=_times(self.input, "2"),
            output=_times(self.output, "1.5"),
            cache_write_5m=_times(self.cache_write_5m, "2"),
            cache_write_1h=_times(self.cache_write_1h, "2"),
            cache_read=_times(self.cache_read, "2"),
        )

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        """The five prices in field order."""
        return (self.input, self.output, self.cache_write_5m, self.cache_write_1h, self.cache_read)


@dataclass(frozen=True, slots=True)
class PriceMatch:
    """How a model name was priced: the row, the kind of match and the table key that matched.

    ``long_context`` is the row used above ``LONG_CONTEXT_THRESHOLD`` prompt tokens, if any.
    """

    price: ModelPrice
    matched_by: MatchKind
    key: str
    long_context: ModelPrice | None = None


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """A cost computed from a price table, with what it rests on.

    ``estimated_split`` is true when the input/output split was assumed (``cost_combined``);
    ``long_context`` is true when the long-context row was charged.
    """

    usd: float
    matched_by: MatchKind
    key: str
    table_version: str
    estimated_split: bool
    long_context: bool = False


_P = ModelPrice
# Family key -> (list price, further published ids of the family). Family keys are new-style.
_BUILTIN_FAMILIES: Final[dict[str, tuple[ModelPrice, tuple[str, ...]]]] = {
    "claude-opus-4-5": (_P(5, 25, 6.25, 10, 0.50), ("claude-opus-4-5-20251101",)),
    "claude-opus-4-1": (_P(15, 75, 18.75, 30, 1.50), ("claude-opus-4-1-20250805",)),
    "claude-opus-4": (_P(15, 75, 18.75, 30, 1.50), ("claude-opus-4-20250514", "claude-opus-4-0")),
    "claude-opus-3": (
        _P(15, 75, 18.75, 30, 1.50),
        ("claude-3-opus-20240229", "claude-3-opus-latest"),
    ),
    "claude-sonnet-4-5": (_P(3, 15, 3.75, 6, 0.30), ("claude-sonnet-4-5-20250929",)),
    "claude-sonnet-4": (
        _P(3, 15, 3.75, 6, 0.30),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
    ),
    "claude-sonnet-3-7": (
        _P(3, 15, 3.75, 6, 0.30),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet-latest"),
    ),
    "claude-sonnet-3-5": (
        _P(3, 15, 3.75, 6, 0.30),
        ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest"),
    ),
    "claude-haiku-4-5": (_P(1, 5, 1.25, 2, 0.10), ("claude-haiku-4-5-20251001",)),
    "claude-haiku-3-5": (
        _P(0.80, 4, 1, 1.60, 0.08),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"),
    ),
    "claude-haiku-3": (_P(0.25, 1.25, 0.30, 0.50, 0.03), ("claude-3-haiku-20240307",)),
}
# The original design's tier table gives one cache-write price: taken as the 5-minute one,
# with the 1-hour one by the rule of thumb (2x input).
_BUILTIN_TIERS: Final[dict[Tier, ModelPrice]] = {
    "opus": _P(15, 75, 18.75, 30, 1.5),
    "sonnet": _P(3, 15, 3.75, 6, 0.3),
    "haiku": _P(0.8, 4, 1.0, 1.6, 0.08),
}
del _P

# A table entry is its own price, or the family key whose price it follows.
_Entry: TypeAlias = ModelPrice | str


class PriceTable:
    """An immutable price table: ``default()`` list prices, ``with_overrides()`` from config."""

    __slots__ = ("_entries", "_matches", "_tiers", "_version")

    def __init__(
        self,
        *,
        entries: Mapping[str, _Entry],
        tiers: Mapping[Tier, ModelPrice],
        version: str | None = None,
    ) -> None:
        """Internal: build with ``default()`` and ``with_overrides()``."""
        self._entries: dict[str, _Entry] = dict(entries)
        self._tiers: dict[Tier, ModelPrice] = dict(tiers)
        if version is None:
            fingerprint = self.fingerprint()
            same = fingerprint == _builtin_fingerprint()
            version = BUILTIN_VERSION if same else f"{BUILTIN_VERSION}+{fingerprint[:10]}"
        self._version = version
        # The table is immutable, so lookups by model name can be remembered (bounded).
        self._matches: dict[str, PriceMatch | None] = {}

    @classmethod
    def default(cls) -> PriceTable:
        """The built-in Anthropic list prices (see ``BUILTIN_VERSION``)."""
        entries: dict[str, _Entry] = {}
        for family, (price, ids) in _BUILTIN_FAMILIES.items():
            entries[family] = price
            entries.update(dict.fromkeys(ids, family))
        return cls(entries=entries, tiers=_BUILTIN_TIERS, version=BUILTIN_VERSION)

    @property
    def version(self) -> str:
        """``builtin-2025-11``, or that with ``+<hash of the contents>`` when prices differ."""
        return self._version

    def __repr__(self) -> str:
        return f"<PriceTable {self._version} with {len(self._entries)} models>"

    def with_overrides(self, overrides: Mapping[str, Mapping[str, float]]) -> PriceTable:
        """A new table with prices from the config file applied on top of this one.

        Each key names one entry: a family (``claude-sonnet-4-5``, ``claude-sonnet-4.5`` or
        ``claude-3-5-sonnet``) sets the price of every id of that family; a published id
        (``claude-sonnet-4-5-20250929``) prices that id alone; ``tier:opus``, ``tier:sonnet``,
        ``tier:haiku`` set a tier fallback; any other name (``gpt-4``, ``deepseek-chat``)
        becomes a priced model. Values need ``input`` and ``output``; missing cache prices follow
        the rules of thumb. Raises ``ValueError`` naming the key for anything invalid.
        """
        entries = dict(self._entries)
        tiers = dict(self._tiers)
        named: dict[str, str] = {}
        for key, fields in overrides.items():
            target = self._override_target(key)
            price = _parse_override(key, fields)
            if target in named:
                raise ValueError(
                    f"price overrides {named[target]!r} and {key!r} both name {target!r}"
                )
            named[target] = key
            if target.startswith(_TIER_PREFIX):
                tiers[_tier_named(key, target.removeprefix(_TIER_PREFIX))] = price
            else:
                entries[target] = price
        return PriceTable(entries=entries, tiers=tiers)

    def _override_target(self, key: object) -> str:
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"price override {key!r}: the model name must be a non-empty string")
        name = _canonical(key)
        if name.startswith(_TIER_PREFIX) or name in self._entries:
            return name
        return _claude_family(name, whole=True) or name

    def match(self, model: str | None) -> PriceMatch | None:
        """The price for a model name, or ``None`` when it is unpriced."""
        if model is None:
            return None
        try:
            return self._matches[model]
        except KeyError:
            pass
        found = self._match(model)
        if len(self._matches) >= MATCH_CACHE_SIZE:
            self._matches.clear()
        self._matches[model] = found
        return found

    def _match(self, model: str) -> PriceMatch | None:
        name = _canonical(model)
        if name in self._entries:
            return self._hit(name, "exact")
        normal = normalise_model(model)
        if normal in self._entries:
            return self._hit(normal, "family")
        family = _claude_family(normal)
        if family is not None and family in self._entries:
            return self._hit(family, "family")
        tier = tier_of(model)
        if tier in self._tiers:
            return PriceMatch(self._tiers[tier], "tier", _TIER_PREFIX + tier)
        return None

    def _hit(self, key: str, matched_by: MatchKind) -> PriceMatch:
        price = self._price_of(key)
        long_row = price.long_context() if _has_long_context(key) else None
        return PriceMatch(price, matched_by, key, long_row)

    def _price_of(self, key: str) -> ModelPrice:
        entry = self._entries[key]
        if isinstance(entry, str):
            entry = self._entries[entry]
            assert isinstance(entry, ModelPrice)  # families always carry their own price
        return entry

    def cost(
        self,
        model: str | None,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_write_5m_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        cache_read_tokens: int = 0,
    ) -> CostEstimate | None:
        """The list-price cost of one request, or ``None`` when the model is unpriced."""
        return self._cost(
            model,
            (
                input_tokens,
                output_tokens,
                cache_write_5m_tokens,
                cache_write_1h_tokens,
                cache_read_tokens,
            ),
            estimated_split=False,
        )

    def cost_combined(self, model: str | None, tokens: int) -> CostEstimate | None:
        """The cost of a combined input+output count, split by ``ASSUMED_INPUT_SHARE``.

        The result is flagged ``estimated_split``; ``None`` when the model is unpriced.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        input_tokens = math.floor(tokens * ASSUMED_INPUT_SHARE)
        counts = (input_tokens, tokens - input_tokens, 0, 0, 0)
        return self._cost(model, counts, estimated_split=True)

    def combined_usd(self, model: str | None, tokens: int) -> float | None:
        """``cost_combined(model, tokens).usd`` without building the estimate (hot path)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        found = self.match(model)
        if found is None:
            return None
        input_tokens = math.floor(tokens * ASSUMED_INPUT_SHARE)
        row = found.price
        if found.long_context is not None and input_tokens > LONG_CONTEXT_THRESHOLD:
            row = found.long_context
        return (input_tokens * row.input + (tokens - input_tokens) * row.output) / 1_000_000

    def _cost(
        self, model: str | None, counts: tuple[int, int, int, int, int], *, estimated_split: bool
    ) -> CostEstimate | None:
        for field, count in zip(_FIELDS, counts, strict=True):
            if count < 0:
                raise ValueError(f"{field} tokens must be >= 0, got {count!r}")
        found = self.match(model)
        if found is None:
            return None
        prompt = counts[0] + counts[2] + counts[3] + counts[4]
        long_context = found.long_context is not None and prompt > LONG_CONTEXT_THRESHOLD
        row = found.long_context if long_context and found.long_context else found.price
        usd = sum(n * p for n, p in zip(counts, row.as_tuple(), strict=True)) / 1_000_000
        return CostEstimate(
            usd=usd,
            matched_by=found.matched_by,
            key=found.key,
            table_version=self._version,
            estimated_split=estimated_split,
            long_context=long_context,
        )

    def entries(self) -> Mapping[str, ModelPrice]:
        """Every key of the table with its price, tiers last as ``tier:<name>``, for display."""
        table = {key: self._price_of(key) for key in self._entries}
        for tier, price in self._tiers.items():
            table[_TIER_PREFIX + tier] = price
        return table

    def long_context_entries(self) -> Mapping[str, ModelPrice]:
        """The long-context rows of the keys that have one, for display."""
        return {
            key: self._price_of(key).long_context()
            for key in self._entries
            if _has_long_context(key)
        }

    def fingerprint(self) -> str:
        """A stable identity of the prices (sha256 hex): equal iff every entry prices the same."""
        rows = sorted((key, price.as_tuple()) for key, price in self.entries().items())
        blob = json.dumps(rows, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def _has_long_context(key: str) -> bool:
    return _claude_family(key) in _LONG_CONTEXT_FAMILIES


def _tier_named(key: str, tier: str) -> Tier:
    if tier not in _PRICED_TIERS:
        raise ValueError(
            f"price override {key!r}: unknown tier {tier!r} (expected one of tier:opus, "
            "tier:sonnet, tier:haiku)"
        )
    return tier


def _parse_override(key: str, fields: object) -> ModelPrice:
    if not isinstance(fields, Mapping):
        raise ValueError(f"price override {key!r}: expected a table of prices, got {fields!r}")
    unknown = sorted(str(name) for name in fields if name not in _FIELDS)
    if unknown:
        raise ValueError(
            f"price override {key!r}: unknown field(s) {', '.join(unknown)} "
            f"(expected {', '.join(_FIELDS)})"
        )
    missing = [name for name in ("input", "output") if name not in fields]
    if missing:
        raise ValueError(f"price override {key!r}: missing {' and '.join(missing)}")
    try:
        prices = {name: _checked(name, value) for name, value in fields.items()}
        price = ModelPrice.from_rates(
            prices["input"],
            prices["output"],
            cache_write_5m=prices.get("cache_write_5m"),
            cache_write_1h=prices.get("cache_write_1h"),
            cache_read=prices.get("cache_read"),
        )
        price.long_context()  # derived rows must be finite too
    except ValueError as error:
        raise ValueError(f"price override {key!r}: {error}") from None
    return price


@functools.cache
def _builtin_fingerprint() -> str:
    return PriceTable.default().fingerprint()
