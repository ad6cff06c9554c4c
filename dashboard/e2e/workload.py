"""The browser test's workload (dashboard/e2e/run.mjs): a ~30-second graph of Python tasks on
the scheduler given as argv[1], run inside ``shoal.performance_report`` (argv[2] is the report
file) so that the profiler samples it. Every result is held until the test says so. Prints
``STARTED``, ``KEYS n``, ``HELD`` (the report is written and the results are still held) and,
after reading ``release`` on stdin, ``RELEASED``."""

from __future__ import annotations

import sys
import time

import shoal


def busy(i: int, ms: int, size: int) -> bytes:
    """A Python task the profiler can see: spins in a function of its own for ms."""
    deadline = time.perf_counter() + ms / 1000
    while time.perf_counter() < deadline:
        spin()
    return bytes(size)


def spin() -> int:
    return sum(range(300))


def main() -> None:
    addr, report = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    with shoal.Client(addr, timeout=60) as client:
        threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        ms = 40
        n = int(seconds * threads * 1000 / ms)
        print("STARTED", flush=True)
        print("KEYS", n, flush=True)
        with shoal.performance_report(filename=report):
            futs = client.map(busy, range(n), ms=ms, size=64 << 10, key=[f"busy-{i}" for i in range(n)])
            shoal.wait(futs)
        print("HELD", flush=True)
        for line in sys.stdin:
            if line.strip() == "release":
                break
        del futs
        time.sleep(0.5)
        print("RELEASED", flush=True)


if __name__ == "__main__":
    main()
