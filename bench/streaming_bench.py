"""Reading speed as whole processes: ``mlaas4hep read`` against a bare ``uproot.iterate`` of the same branches.

    $MLAAS4HEP_VENV/bin/python bench/streaming_bench.py [--events 300000] [--rounds 7]

Two generated files (20 flat and 40 jagged branches, the shape of the original's open-data recipe) are read by
separate processes, each timed from start to exit, imports included: (1) a bare script that imports uproot and
runs ``uproot.iterate`` single-threaded over the branches pass 2 reads, with the stream's per-file step, the
baseline; (2) ``python -m appliance read`` with the specs file already computed (loading it is timed), on the
cores the process may use (``read_threads`` 0) and (3) on one thread (``read_threads`` 1). The streaming layer
does more than the baseline (mixing the files, normalisation, padding, split assignment, shuffling): its
threads (appliance.data.lanes) must pay for that. Every route is read locally and through the appliance's
XRootD proxy (its role template) in front of an origin; the bare iterate from the origin directly gives the
proxy's own ratio. Rounds are interleaved (the order rotates each round) and each figure is a median. The
machine's load average is sampled as every process starts: other work on the cores makes rounds vary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import uproot

from appliance.data.lanes import available_cores, keep_freed_memory
from appliance.data.streaming import MIN_READ_EVENTS, READ_EVENTS
from appliance.data.synthetic import SyntheticSchema, write_root_file
from mlaas4hep_devtools.xrootd import xrootd_site

# The checkout's files: the XRootD proxy role's template and the results folder (the code is installed).
REPO = Path(__file__).resolve().parents[1]
CHUNK = 10_000
# The inflater the stream has uproot use (importing appliance.data.sources sets it): "isal", or "zlib" without
# python-isal.
INFLATE = uproot.compression._decompress_ZLIB.library

# The baseline: what a user would write to read the same branches, nothing more.
BARE = """
import json, sys
import uproot
job = json.loads(sys.argv[1])
if job.get("inflate"):  # uproot's ZLIB decompressor's library, as appliance.data.sources sets it
    uproot.compression._decompress_ZLIB.library = job["inflate"]
n = 0
for arrays in uproot.iterate(
    [u + ":Events" for u in job["urls"]], job["branches"], step_size=job["step"], library="ak", how=dict
):
    n += len(arrays[job["branches"][0]])
print(json.dumps({"events": n}))
"""


@dataclass
class Runs:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    output: dict = field(default_factory=dict)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, float, dict]:
    """Run one process to its end: wall seconds, CPU seconds (user + system), peak RSS in MiB, the load
    average as it started, and the JSON line it printed last."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # this process's own rusage, not all children's
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{argv[:5]} failed: {err.read().decode()[-2000:]}")
        output = json.loads(out.read().decode().strip().splitlines()[-1])
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, load, output


class Bench:
    def __init__(self, work: Path, files: list[Path], events: int) -> None:
        self.work = work
        self.files = files
        self.events = events
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.runs: dict[str, Runs] = {}
        self.commands: dict[str, list[str]] = {}
        self.branches: list[str] = []

    def workflow(self, route: str, urls: list[str]) -> None:
        """Write the route's workflow files, compute its specs once (untimed) and register its commands."""
        folder = self.work / route
        folder.mkdir()
        (folder / "files.txt").write_text("\n".join(urls) + "\n")
        (folder / "labels.txt").write_text("1\n0\n")
        for threads in (0, 1):
            params = {"chunk_size": CHUNK, "jagged_length": "p99", "read_threads": threads}
            (folder / f"params{threads}.json").write_text(json.dumps(params))
        read = [sys.executable, "-m", "appliance", "read", "--quiet", "--files", str(folder / "files.txt")]
        read += ["--labels", str(folder / "labels.txt"), "--specs", str(folder / "specs.json")]
        warm = subprocess.run(
            [*read, "--params", str(folder / "params1.json")], capture_output=True, env=self.env
        )
        if warm.returncode != 0:
            raise RuntimeError(warm.stderr.decode()[-2000:])
        specs = json.loads((folder / "specs.json").read_text())["features"]
        self.branches = specs["dataset"]["read_branches"]
        self.dim = specs["dim"]
        # The stream reads blocks of max(chunk, MIN_READ_EVENTS) events, shared among the files by size.
        step = max(CHUNK, MIN_READ_EVENTS) // len(urls)
        job = json.dumps({"urls": urls, "branches": self.branches, "step": step})
        self.step = step
        self.read_step = step * max(1, READ_EVENTS // max(CHUNK, MIN_READ_EVENTS))
        self.commands[f"bare {route}"] = [sys.executable, "-c", BARE, job]
        if (
            route == "local"
        ):  # the stream asks uproot for several steps at a time: the baseline doing the same
            job = json.dumps({"urls": urls, "branches": self.branches, "step": self.read_step})
            self.commands["bareread local"] = [sys.executable, "-c", BARE, job]
            # and inflating with ISA-L as the stream does: the part of the gain that is the inflater's
            job = json.dumps({"urls": urls, "branches": self.branches, "step": step, "inflate": INFLATE})
            self.commands["bareisal local"] = [sys.executable, "-c", BARE, job]
        self.commands[f"read {route}"] = [*read, "--params", str(folder / "params0.json")]
        self.commands[f"read1 {route}"] = [*read, "--params", str(folder / "params1.json")]

    def round(self, number: int) -> None:
        names = list(self.commands)
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu, rss, load, output = timed(self.commands[name], self.env)
            runs = self.runs.setdefault(name, Runs())
            runs.wall.append(wall)
            runs.cpu.append(cpu)
            runs.rss_mib.append(rss)
            runs.load.append(load)
            runs.output = output
            if output.get("events") != self.events:
                raise RuntimeError(f"{name} read {output.get('events')} events, expected {self.events}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--local-only", action="store_true", help="skip the XRootD routes")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "streaming.md"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        work = Path(tmp)
        half = args.events // 2
        schema = SyntheticSchema(20, 40)
        files = [
            write_root_file(work / "signal.root", half, shift=1.0, seed=1, schema=schema),
            write_root_file(work / "background.root", args.events - half, seed=2, schema=schema),
        ]
        bench = Bench(work, files, args.events)
        bench.workflow("local", [str(f) for f in files])
        if args.local_only:
            for number in range(args.rounds):
                bench.round(number)
        else:
            with xrootd_site(REPO / "roles" / "xrootd_proxy") as site:
                names = [site.add_file(f) for f in files]
                bench.workflow("proxy", [site.proxy_url(n) for n in names])
                origin = [site.origin_url(n) for n in names]
                job = {"urls": origin, "branches": bench.branches, "step": bench.step}
                bench.commands["bare origin"] = [sys.executable, "-c", BARE, json.dumps(job)]
                for number in range(args.rounds):
                    bench.round(number)
    text = report(bench, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def report(bench: Bench, args: argparse.Namespace) -> str:
    med = {name: statistics.median(r.wall) for name, r in bench.runs.items()}
    cpu = {name: statistics.median(r.cpu) for name, r in bench.runs.items()}
    loads = [x for r in bench.runs.values() for x in r.load]
    threads = bench.runs["read local"].output.get("threads")
    rows = []

    def row(name: str, label: str, baseline: str, target: str = "") -> None:
        if name not in med:
            return
        ratio = med[baseline] / med[name]
        mark = f"**{ratio:.2f}**" if target else f"{ratio:.2f}"
        rows.append(
            f"| {label} | {med[name]:.2f} | {cpu[name]:.2f} | {args.events / med[name]:,.0f} | {mark} | {target} |"
        )

    for route, where in (("local", "local files"), ("proxy", "through the XRootD proxy")):
        row(f"bare {route}", f"bare `uproot.iterate`, one thread, {where} (baseline)", f"bare {route}")
        row(f"read {route}", f"`mlaas4hep read`, {threads} threads, {where}", f"bare {route}", ">= 1.0")
        row(f"read1 {route}", f"`mlaas4hep read`, 1 thread, {where}", f"bare {route}")
        read_size = f"{bench.read_step:,} entries a call, the stream's read size"
        row(f"bareread {route}", f"bare `uproot.iterate`, one thread, {read_size}, {where}", f"bare {route}")
        row(
            f"bareisal {route}",
            f"bare `uproot.iterate`, one thread, inflating with {INFLATE}, {where}",
            f"bare {route}",
        )
    row("bare origin", "bare `uproot.iterate` from the XRootD origin directly (baseline)", "bare origin")
    row("bare proxy", "bare `uproot.iterate` through the proxy, against the origin", "bare origin", ">= 0.9")
    table = "\n".join(rows)
    met = med["bare local"] / med["read local"] >= 1.0
    spread = {name: (min(r.wall), max(r.wall)) for name, r in bench.runs.items()}
    spreads = ", ".join(f"{name} {lo:.2f}-{hi:.2f} s" for name, (lo, hi) in spread.items())
    rss = {name: statistics.median(r.rss_mib) for name, r in bench.runs.items()}
    output = bench.runs["read local"].output
    return f"""# Reading speed (issues 2 and 16)

`bench/streaming_bench.py`, {datetime.now(UTC).isoformat(timespec="seconds")}, {platform.node()},
{os.cpu_count()} CPUs ({available_cores()} available to the bench), Python {platform.python_version()},
uproot {uproot.__version__}.

Whole processes, each timed from start to exit (imports, opening the files, loading the specs file and
exiting included): {args.events:,} events in two generated files, 20 flat + 40 jagged branches
({len(bench.branches)} branches read), chunk size {CHUNK}, jagged length p99, input dimension {bench.dim}.
The baseline is a bare script that imports uproot and runs `uproot.iterate` over the same branches and files,
single-threaded, {bench.step:,} entries a step (the stream's step per file); `mlaas4hep read` also mixes the
files, normalises, pads, assigns the splits and shuffles. The stream asks uproot for {bench.read_step:,} entries
a call and cuts them into its steps; the bare iterate at that size is shown too, against the same baseline,
so that the part of the gain that comes from larger calls alone can be seen. The bare script runs uproot as
installed, which inflates ZLIB baskets with the standard zlib; `mlaas4hep read` has uproot inflate them with
{INFLATE} (`appliance.data.sources`) and glibc keep freed memory for its next arrays
(`appliance.data.lanes.keep_freed_memory`, {"set" if keep_freed_memory() else "not available here"}); the
bare iterate inflating with {INFLATE} is shown too. Median of {args.rounds} interleaved rounds.

| process | wall s | CPU s | events/s | ratio to its baseline | target |
| --- | ---: | ---: | ---: | ---: | ---: |
{table}

CPU s is user + system time of the process: above the wall time, it ran on more than one core.
Peak RSS (median): bare iterate {rss["bare local"]:.0f} MiB, `mlaas4hep read` {rss["read local"]:.0f} MiB
with {threads} threads and {rss["read1 local"]:.0f} MiB with one, locally.
`mlaas4hep read` reported {output.get("events_per_s", 0):,.0f} events/s for pass 2 alone in its last local
run (the rest of its wall time is start-up, opening and exit).
The target (`mlaas4hep read` at least 1.0 of the bare single-threaded iterate, locally) is
{"met" if met else "NOT met"} in this run.

Load average (1 min) as the processes started: median {statistics.median(loads):.2f}, from {min(loads):.2f}
to {max(loads):.2f}, on {os.cpu_count()} CPUs{"" if max(loads) < 0.5 * (os.cpu_count() or 1) else ": the machine was shared with other work, so the rounds vary and the figures are those of a busy machine"}.
Range of the wall times: {spreads}.
"""


if __name__ == "__main__":
    main()
