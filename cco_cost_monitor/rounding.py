"""Float noise out of every JSON the monitor writes: ``/api/*``, report, export, webhooks.

Sums of prices carry binary float noise (``0.114831999999999``); rounded to 10 decimals
they read as what they are and stay exact far below a micro-dollar. Pure, no imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MONEY_DECIMALS", "tidy"]

MONEY_DECIMALS = 10


def tidy(value: Any) -> Any:
    """Floats rounded to 10 decimals: sums of prices carry float noise (0.114831999...)."""
    if isinstance(value, float):
        return round(value, MONEY_DECIMALS)
    if isinstance(value, dict):
        return {key: tidy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [tidy(item) for item in value]
    return value
