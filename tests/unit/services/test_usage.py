"""Charging for outbound traffic (`berth.services.usage_pricing.Pricing`)."""

from __future__ import annotations

import pytest

from berth.services.usage_pricing import Pricing

GB = 10**9


def test_pricing_arithmetic() -> None:
    pricing = Pricing(price_per_gb=0.09, free_gb=10)
    assert pricing.charge(0) == 0
    assert pricing.charge(10 * GB) == 0
    assert float(pricing.charge(110 * GB)) == pytest.approx(9.0)
