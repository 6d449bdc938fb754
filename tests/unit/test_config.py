"""Reading settings (`berth.config`): problems named in words."""

from __future__ import annotations

import pytest

from berth.config import SettingsError, load_settings


def test_setting_problems_are_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_CURRENCY", "usd")
    with pytest.raises(SettingsError) as currency:
        load_settings()
    assert str(currency.value) == "BERTH_CURRENCY: 'usd' must be 3 capital letters, e.g. USD"
    monkeypatch.delenv("BERTH_CURRENCY")
    monkeypatch.setenv("BERTH_HEADER_READ_TIMEOUT", "100")
    with pytest.raises(SettingsError) as timeout:
        load_settings()
    assert str(timeout.value) == "BERTH_HEADER_READ_TIMEOUT: '100' must be at most 60"
