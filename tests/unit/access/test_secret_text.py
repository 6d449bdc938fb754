"""Generated secrets (access key secrets, the first administrator's password, webhook signing
secrets) are pasted after options, so none may start with `-`."""

from __future__ import annotations

import re

from berth.access.credentials import new_secret_text
from berth.services.keys import new_secret

DRAWS = 4_000  # about 62 of them would start with `-` if nothing redrew them


def test_no_generated_secret_starts_with_a_dash() -> None:
    drawn = [new_secret_text(30) for _ in range(DRAWS)] + [new_secret() for _ in range(DRAWS)]
    assert [secret for secret in drawn if secret.startswith("-")] == []
    assert len(set(drawn)) == len(drawn)


def test_a_secret_keeps_its_length_and_url_safe_alphabet() -> None:
    for nbytes, length in ((18, 24), (30, 40), (32, 43)):
        drawn = [new_secret_text(nbytes) for _ in range(500)]
        assert all(re.fullmatch(rf"[A-Za-z0-9_-]{{{length}}}", secret) for secret in drawn)
        # A dash still appears inside secrets: only the first character is redrawn.
        assert any("-" in secret[1:] for secret in drawn)
