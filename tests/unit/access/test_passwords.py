"""Password hashes run a bounded number at once per process."""

from __future__ import annotations

import asyncio

from berth.access.passwords import Passwords, password_slots


def test_verifications_run_at_most_the_slots_at_once_and_all_answer() -> None:
    async def scenario() -> tuple[list[bool], int]:
        passwords = Passwords(slots=2)
        stored = await passwords.hash("correct-horse")
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, passwords.in_progress)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        attempts = ["correct-horse", "wrong", *["correct-horse"] * 6]
        results = await asyncio.gather(*(passwords.verify(stored, p) for p in attempts))
        watcher.cancel()
        return list(results), most

    results, most = asyncio.run(scenario())
    assert results == [True, False, *[True] * 6]
    assert most == 2


def test_a_verification_given_up_keeps_its_slot_until_its_hash_ends() -> None:
    async def scenario() -> tuple[int, int, bool]:
        passwords = Passwords(slots=1)
        stored = await passwords.hash("correct-horse")
        abandoned = asyncio.create_task(passwords.verify(stored, "correct-horse"))
        await asyncio.sleep(0.005)  # its hash is running
        abandoned.cancel()
        await asyncio.sleep(0)
        still_running = passwords.in_progress
        answered = await passwords.verify(stored, "correct-horse")
        return still_running, passwords.in_progress, answered

    still_running, after, answered = asyncio.run(scenario())
    assert (still_running, after, answered) == (1, 0, True)


def test_a_stored_hash_that_is_not_argon2_never_matches() -> None:
    assert asyncio.run(Passwords(slots=1).verify("plain-text", "plain-text")) is False


def test_each_worker_gets_its_share_of_the_cores_and_at_least_two() -> None:
    assert password_slots(16, 4) == 4
    assert password_slots(2, 2) == 2
    assert password_slots(1, 1) == 2
