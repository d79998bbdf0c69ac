"""The stream's large arrays reuse freed memory (appliance.data.lanes.keep_freed_memory), not fresh pages."""

import json
import subprocess
import sys

import pytest

from appliance.data import lanes

# A stream's pattern: arrays of 1-25 MiB of varying sizes, a few alive at a time, each freed a little after
# the next is made. Prints the minor page faults that cost, in a fresh process so that nothing set glibc up
# before; with argument "keep", after keep_freed_memory.
PROBE = """
import json, resource, sys
from collections import deque
import numpy as np
from appliance.data.lanes import keep_freed_memory

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
rng = np.random.default_rng(0)
live = deque()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(60):
    live.append(np.ones((int(rng.integers(15_000, 25_000)), 256), dtype=np.float32))  # a block
    live.append(np.ones((int(rng.integers(1_000, 3_000)), 256), dtype=np.float32))  # a basket's worth
    if len(live) > 4:
        live.popleft()
        live.popleft()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_arrays_are_reused_instead_of_faulted_in_again():
    default, kept = probe("default"), probe("keep")
    assert kept["kept"] is True
    # glibc's default gives memory back and faults it in again: several times the faults of keeping it
    assert kept["faults"] * 2 < default["faults"], (default, kept)


def test_the_setting_is_made_once():
    assert lanes.keep_freed_memory() is lanes.keep_freed_memory()
