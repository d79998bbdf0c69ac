"""Concurrent jobs are pinned to different cores, within one worker process and across worker processes of
a host (appliance.server.cores); an oversubscribed host shares cores instead of refusing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from appliance.server.cores import reserve_cores

ALLOWED = sorted(os.sched_getaffinity(0))
needs_two_cores = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two cores this process may use")


@needs_two_cores
def test_concurrent_jobs_of_one_worker_get_different_cores(tmp_path) -> None:
    first = reserve_cores(1, tmp_path)
    second = reserve_cores(1, tmp_path)
    assert first.cores != second.cores
    assert set(first.cores + second.cores) <= set(ALLOWED)
    first.release()
    # The released core is free again: the next job takes it rather than sharing the busy one.
    with reserve_cores(1, tmp_path) as third:
        assert third.cores == first.cores
    second.release()


def test_a_job_asking_for_more_cores_than_free_shares_busy_ones(tmp_path) -> None:
    with reserve_cores(len(ALLOWED), tmp_path) as everything:
        assert everything.cores == ALLOWED
        with reserve_cores(1, tmp_path) as shared:
            assert len(shared.cores) == 1 and shared.cores[0] in ALLOWED
    with reserve_cores(len(ALLOWED) + 5, tmp_path) as more:
        assert more.cores == ALLOWED and more.cpu_list == ",".join(map(str, ALLOWED))


@needs_two_cores
def test_another_worker_process_holding_a_core_is_avoided_until_it_dies(tmp_path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from appliance.server.cores import reserve_cores
            held = reserve_cores(1, Path({str(tmp_path)!r}))
            print(held.cores[0], flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        held = int(holder.stdout.readline())
        with reserve_cores(1, tmp_path) as mine:
            assert mine.cores != [held]
        holder.kill()
        holder.wait(10)
        # The kernel dropped the dead worker's lock: this process now locks every core, that one included.
        with reserve_cores(len(ALLOWED), tmp_path) as everything:
            assert everything.cores == ALLOWED and len(everything._locks) == len(ALLOWED)
    finally:
        holder.kill()
        holder.wait(10)
