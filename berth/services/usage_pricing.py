"""The estimated charge for outbound traffic: per project and calendar month (UTC), the bytes
past the monthly free allowance at a price per GB of 10^9 bytes, in money rounded to the cent."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

GB = 10**9
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Pricing:
    price_per_gb: float = 0.0
    free_gb: float = 0.0  # per project and month
    currency: str = "USD"  # ISO 4217

    def charge(self, month_bytes: int) -> Decimal:
        """The estimated charge for a project's month of outbound bytes."""
        free = Decimal(str(self.free_gb)) * GB
        billable = max(Decimal(month_bytes) - free, Decimal(0))
        return billable / GB * Decimal(str(self.price_per_gb))


def month_start(day: dt.date, back: int = 0) -> dt.date:
    """The first day of `day`'s month, `back` months earlier."""
    index = day.year * 12 + day.month - 1 - back
    return dt.date(index // 12, index % 12 + 1, 1)


def money(value: Decimal) -> float:
    return float(value.quantize(CENT, rounding=ROUND_HALF_UP))
