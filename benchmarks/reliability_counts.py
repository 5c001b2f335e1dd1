"""Count what the repository's reliability tests exercise, by running them with counters.

    .venv/bin/python benchmarks/reliability_counts.py [--json out.json] [pytest args ...]

Runs tests/test_reliability*.py, tests/test_store_faults.py, tests/test_bulk.py,
tests/test_repair.py, tests/test_worker_death.py, tests/test_identity.py, tests/test_gc_listing.py and
tests/test_soak.py
(``--files`` picks fewer) in this process (default selection: slow tests skipped) with a pytest plugin
that tallies, in the test process:

* typed refusals: ``LatentdsError`` instances created (each a bad input, crafted name, corrupt or
  missing object refused with a typed error; one refusal re-raised as another type counts twice);
* test cases run per file (parametrizations counted separately);
* faults injected: HTTP errors answered by the loopback S3 fault proxy (``FaultProxy``), and
  worker processes made to die inside a task by the test codec (tests/dying_codec.py: ``os._exit``
  or SIGKILL; each death appends a line to the file ``LATENTDS_TEST_DEATH_LOG`` names, which this
  script sets, so deaths inside Dask workers are counted);
* SIGKILLs: ``os.kill`` / ``os.killpg`` / ``Popen.kill`` with SIGKILL called from a test module
  (Dask's own teardown kills are not counted);
* bit-for-bit comparisons: calls of ``torch.equal``, ``np.array_equal`` and
  ``np.testing.assert_array_equal`` made from a test module (each compares one sample's latent,
  or a batch; the library's own calls are not counted),
  plus manifest rows whose shard bytes ``tests/test_bulk.py::assert_same`` compares;
  comparisons that came out unequal are counted apart (tests also assert that different
  samples differ, e.g. train vs val twins);
* lost / corrupt: tests that failed (every comparison above sits in an assertion: a lost or
  corrupt sample fails its test);
* soak runs (tests/test_soak.py, which keeps each run's figures in ``test_soak.RESULTS``): the
  latents its filler processes compared with the clean run while it ran, the keys read back at
  the end, and lost / corrupt among them.

Not counted: comparisons, refusals and kills inside subprocesses (Dask workers, CLI children).
Numbers are of one run; the figures in benchmarks/RESULTS.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["FILES", "Tally", "main", "table"]

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/test_reliability.py", "tests/test_reliability_inputs.py", "tests/test_store_faults.py",
         "tests/test_bulk.py", "tests/test_repair.py", "tests/test_worker_death.py", "tests/test_identity.py",
         "tests/test_gc_listing.py", "tests/test_soak.py"]


def _from_test(depth: int = 2) -> bool:
    """Whether the call being counted comes from a test module (through subprocess /
    multiprocessing / signal helpers at most): library and Dask calls are not the tests' own."""
    f = sys._getframe(depth)
    while f is not None:
        name = str(f.f_globals.get("__name__", ""))
        if name.startswith(("subprocess", "multiprocessing", "signal", "psutil")):
            f = f.f_back
            continue
        return name.rsplit(".", 1)[-1].startswith("test_") or name == "conftest"
    return False


class Tally:
    """The pytest plugin: patches counting wrappers in at configure time, tallies outcomes."""

    def __init__(self) -> None:
        self.c: Counter[str] = Counter()
        self.per_file: Counter[str] = Counter()
        self.failed: list[str] = []

    # -- wrappers ------------------------------------------------------------------------
    def pytest_configure(self, config: Any) -> None:
        import numpy as np
        import torch

        from latentds.errors import LatentdsError
        from latentds.testing.loopback_s3 import FaultProxy

        c = self.c
        init = LatentdsError.__init__

        def counting_init(err: Any, *a: Any, **kw: Any) -> None:
            c["typed_refusals"] += 1
            init(err, *a, **kw)

        LatentdsError.__init__ = counting_init  # type: ignore[method-assign]

        should_fail = FaultProxy._should_fail

        def counting_should_fail(proxy: Any, method: str) -> int:
            status = should_fail(proxy, method)
            if status:
                c["http_faults"] += 1
            return status

        FaultProxy._should_fail = counting_should_fail  # type: ignore[method-assign]

        def compare(fn: Any, kind: str) -> Any:
            def wrapped(a: Any, b: Any, *rest: Any, **kw: Any) -> Any:
                if not _from_test():
                    return fn(a, b, *rest, **kw)
                try:
                    out = fn(a, b, *rest, **kw)
                except AssertionError:
                    c["unequal_comparisons"] += 1
                    raise
                if out is False:
                    c["unequal_comparisons"] += 1
                else:
                    c["bit_comparisons"] += 1
                return out
            return wrapped

        torch.equal = compare(torch.equal, "torch")  # type: ignore[assignment]
        np.array_equal = compare(np.array_equal, "np")  # type: ignore[assignment]
        np.testing.assert_array_equal = compare(np.testing.assert_array_equal, "np")  # type: ignore[assignment]

        real_kill, real_killpg = os.kill, os.killpg

        def kill(pid: int, sig: int) -> None:
            if sig == signal.SIGKILL and _from_test():
                c["sigkills"] += 1
            real_kill(pid, sig)

        def killpg(pgid: int, sig: int) -> None:
            if sig == signal.SIGKILL and _from_test():
                c["sigkills"] += 1
            real_killpg(pgid, sig)

        os.kill, os.killpg = kill, killpg  # Popen.kill / Process.kill go through os.kill

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[Any]) -> None:
        c = self.c
        for mod in {id(i.module): i.module for i in items if getattr(i, "module", None)}.values():
            same = getattr(mod, "assert_same", None)
            if callable(same):
                def counting_same(a: Any, b: Any, _same: Any = same) -> None:
                    _same(a, b)
                    c["bit_comparisons"] += len(a.get("manifest") or [])  # rows whose shard bytes matched
                mod.assert_same = counting_same

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.c[f"tests_{report.outcome}"] += 1
            if report.when == "call" and report.outcome == "passed":
                self.per_file[report.nodeid.split("::", 1)[0]] += 1
            if report.outcome == "failed":
                self.failed.append(report.nodeid)


def table(paths: list[str]) -> str:
    """The markdown rows benchmarks/RESULTS.md shows, from this script's ``--json`` files."""
    lines = ["| run (JSON) | commit | load 1m | tests passed / failed | worker deaths | HTTP faults | "
             "bit-for-bit comparisons | soak: latents compared | soak: keys read back | soak lost | soak corrupt |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in paths:
        d = json.loads(Path(p).read_text())
        soak = d.get("soak") or []
        lines.append(
            f"| {Path(p).name} | `{d['commit']}` | {d['loadavg_1m']} | {d['test_cases_passed']} / "
            f"{d['test_cases_failed']} | {d['faults_injected']['worker_deaths_in_task']} | "
            f"{d['faults_injected']['http_errors']} | {d['bit_for_bit_comparisons']} | "
            f"{sum(r['compared_while_running'] for r in soak)} | {sum(r['served_keys'] for r in soak)} | "
            f"{d.get('soak_lost', 0)} | {d.get('soak_corrupt', 0)} |")
    for p in paths:
        for r in json.loads(Path(p).read_text()).get("soak") or []:
            lines.append(f"\nsoak {r['store']}, {r['seconds']:.0f} s: {r['rounds']} filler rounds, "
                         f"{r['compactions']} compactions, {r['gcs']} gc passes ({r['gc_removed']} objects removed), "
                         + (f"{r['commits_while_serving']} commits and {r['gcs_while_serving']} gc passes inside a "
                            f"filler's round, " if "commits_while_serving" in r else "") +
                         f"{r['compared_while_running']} latents compared while running "
                         f"({r['mismatched_while_running']} differed), {r['served_keys']} keys read back at the end: "
                         f"{r['lost']} lost, {r['corrupt']} corrupt; verify: {len(r['verify_bad'])} problems; "
                         f"errors: {len(r['errors'])}; load {r['loadavg_1m']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import pytest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--json", default=None, help="also write the counts here")
    ap.add_argument("--files", nargs="+", default=FILES, help="test files to run (default: all of FILES)")
    ap.add_argument("--table", nargs="+", default=None, metavar="JSON",
                    help="print the markdown table of earlier --json outputs, run nothing")
    args, rest = ap.parse_known_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    os.chdir(ROOT)
    tally = Tally()
    deaths = Path(tempfile.mkdtemp(prefix="lds-deaths-")) / "deaths.log"
    os.environ["LATENTDS_TEST_DEATH_LOG"] = str(deaths)  # inherited by Dask workers started from here
    t0 = time.time()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", *args.files, *rest], plugins=[tally])
    wall = time.time() - t0
    c = tally.c
    c["worker_deaths"] = len(deaths.read_text().splitlines()) if deaths.exists() else 0
    soak = list(getattr(sys.modules.get("test_soak"), "RESULTS", []))
    out = {
        "test_cases_passed": c["tests_passed"], "test_cases_failed": c["tests_failed"],
        "test_cases_skipped": c["tests_skipped"], "per_file_passed": dict(tally.per_file),
        "typed_refusals": c["typed_refusals"],
        "faults_injected": {"http_errors": c["http_faults"], "worker_deaths_in_task": c["worker_deaths"],
                            "sigkills": c["sigkills"]},
        "bit_for_bit_comparisons": c["bit_comparisons"], "unequal_comparisons": c["unequal_comparisons"],
        "lost_or_corrupt": c["tests_failed"], "failed": tally.failed,
        "soak": soak, "soak_compared": sum(r["compared_while_running"] + r["served_keys"] for r in soak),
        "soak_lost": sum(r["lost"] for r in soak), "soak_corrupt": sum(r["corrupt"] for r in soak),
        "wall_s": round(wall, 1), "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
