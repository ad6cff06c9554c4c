"""Print a pickled function and payload for the worker's real-executor test.

Usage: make_py_task.py NAME -> two hex lines: cloudpickle of the function, pickle of (args, kwargs).
"""

import hashlib
import os
import pickle
import sys
import time

import cloudpickle
from shoal._refs import Ref

TASKS = {
    # x is a msgpack result of a Go task, t an Arrow result (a pyarrow.Table).
    "add10": (lambda x: x + 10, (Ref("x"),)),
    "rows": (lambda t: t.num_rows * 2, (Ref("tbl"),)),
    # b is a large bytes value: its length and a digest of its contents, as text
    "digest": (lambda b: f"{len(b)}:{hashlib.sha256(b).hexdigest()}", (Ref("big"),)),
    # a large result (3 MiB), which the executor may put in a segment
    "blob": (lambda: b"\x07" * (3 << 20), ()),
    # sleeps 2 ms: a task whose run time is known
    "nap": (lambda: time.sleep(0.002), ()),
    # a digest of 70 values s0…s69 (more than a run passes as descriptors)
    "join70": (lambda *bs: hashlib.sha256(b"".join(bs)).hexdigest(), tuple(Ref(f"s{i}") for i in range(70))),
    # a large numpy array (2 MiB of float64), which an executor that keeps results keeps
    "arange": (lambda: __import__("numpy").arange(1 << 18, dtype="float64"), ()),
    "asum": (lambda a: float(a.sum()), (Ref("a"),)),
    "ainc": (lambda a: a + 1, (Ref("a"),)),
    # how many results the executor running it keeps
    "nkept": (lambda: len(__import__("shoal")._worker.current().executor.kept), ()),
    # secedes (gives its thread back), then sleeps 2 ms
    "secede_nap": (lambda: (__import__("shoal").secede(), time.sleep(0.002))[1], ()),
    # kills its executor
    "die": (lambda: os._exit(3), ()),
    # a builtin, as client.get sends a plain call of one (the test writes a literal payload)
    "add": (__import__("operator").add, ()),
}

fn, args = TASKS[sys.argv[1]]
data = cloudpickle.dumps(fn)
print(hashlib.sha256(data).hexdigest())
print(data.hex())
print(pickle.dumps((args, {}), protocol=5).hex())
