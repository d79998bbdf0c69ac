"""Concurrent test sessions and benches on one machine get job uid ranges of their own: a worker kills
whatever runs under a uid it gives out, so two sessions on one range killed each other's jobs."""

from __future__ import annotations

import subprocess
import sys

from tests.server.conftest import JOB_UIDS, REPO, _own_uid_range

SLOT = (JOB_UIDS[0] - 61100) // 10


def test_a_second_range_asked_for_from_this_sessions_slot_is_another() -> None:
    # This process holds its slot: asking again from the same slot moves on to a free one.
    again = _own_uid_range(start=SLOT)
    assert again != JOB_UIDS and len(again) == 10


def test_another_process_starting_at_this_sessions_slot_gets_another_range() -> None:
    code = f"from tests.server.conftest import _own_uid_range; print(_own_uid_range(start={SLOT})[0])"
    first = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert int(first.stdout) != JOB_UIDS[0]
