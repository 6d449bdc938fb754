"""How counts read in what Berth tells people: "1 image", "2 images", "1,204 repositories"."""

from __future__ import annotations


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """`number` with the noun it counts, in the singular for exactly one."""
    noun = singular if number == 1 else (plural or f"{singular}s")
    return f"{number:,} {noun}"
