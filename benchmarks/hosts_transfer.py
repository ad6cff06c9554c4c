"""A 200 MB value made by a Python task on worker w2 and used by a Python task on worker w3.

Run by BenchmarkHostsTransferPython (cmd/shoal/e2e_hosts_test.go) against a cluster on test
hosts:

    python benchmarks/hosts_transfer.py SCHEDULER_ADDRESS N [SIZE [KIND]]

Before each transfer (the first, a warm-up, too) it waits for a line on stdin, so that the
benchmark can time a raw TCP stream on the same link between two transfers.

KIND is numpy (a uint8 array: pickled with its buffer out of band, so a task gets it without a
copy) or bytes (pickled in band: unpickling copies it). Prints one line per transfer (the
warm-up's too): the seconds from submitting the consumer on w3 to its result (the peer
transfer w2 -> w3 plus a task's round trip), then the seconds the same consumer takes on w2,
where the value is (no transfer: what a Python task with this input costs anyway).
"""
import sys
import time

from shoal import Client, wait


def make_bytes(n, i):
    return bytes(n)


def make_numpy(n, i):
    import numpy as np
    return np.full(n, i % 251, dtype=np.uint8)


def size_of(v):
    return v.nbytes if hasattr(v, "nbytes") else len(v)


def main():
    addr, n = sys.argv[1], int(sys.argv[2])
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 200 << 20
    make = make_numpy if (sys.argv[4] if len(sys.argv) > 4 else "numpy") == "numpy" else make_bytes
    with Client(addr) as client:
        for i in range(-1, n):  # -1: warm-up (executors start, first pages faulted in)
            if not sys.stdin.readline():
                return
            made = client.submit(make, size, i, workers=["w2"], pure=False)
            wait(made)
            start = time.perf_counter()
            got = client.submit(size_of, made, workers=["w3"], pure=False).result()
            took = time.perf_counter() - start
            assert got == size, got
            start = time.perf_counter()
            got = client.submit(size_of, made, workers=["w2"], pure=False).result()
            local = time.perf_counter() - start
            assert got == size, got
            print(f"{took:.6f} {local:.6f}", flush=True)
            del made


if __name__ == "__main__":
    main()
