"""The Python executor's cost per run, alone (issue 19: where the million-task graph's time goes).

    .venv/bin/python benchmarks/executor_loop.py [--runs 200000] [--batch 20] [--payload literal|pickle]
        [--messages runs|single]

A real ``shoal.executor.Executor`` serves one end of a socket pair in a child process; this
process plays its worker and sends ``run`` messages in batches, as a worker sends short runs,
each like an ``add`` of the million-task graph's tree: ``operator.add`` of two dependencies
that arrive as msgpack frames, named in a literal payload as ``client.get`` sends a plain call
(``--payload pickle``: by ``Ref`` in a pickled one, as ``client.submit`` does), returning an
int. A batch goes as one ``runs`` message, as a worker sends it to an executor that takes them
(``--messages single``: one ``run`` message per run, back to back, as before). Printed:
the wall time per run and the executor's CPU per run (its user + system time, from
``getrusage`` once it exits), which is what a worker's executor spends per small task besides
the task itself.
"""

from __future__ import annotations

import argparse
import operator
import os
import pickle
import resource
import socket
import time
from typing import Any, Iterator

import msgpack

from shoal import _wire, executor
from shoal._keys import dumps_callable, func_hash
from shoal._refs import Ref, literal_packer, literal_payload


def batch(first: int, n: int, fhash: str, fdata: bytes | None,
          literal: bool) -> list[tuple[dict[str, Any], list[bytes]]]:
    """``n`` runs with ids from ``first``; the first carries the function when ``fdata``."""
    out: list[tuple[dict[str, Any], list[bytes]]] = []
    pack = literal_packer()
    for i in range(first, first + n):
        a, b = f"('sum', 0, {2 * i})", f"('sum', 0, {2 * i + 1})"
        header: dict[str, Any] = {
            "op": "run", "id": i, "key": f"('sum', 1, {i})", "func": fhash,
            "payload": literal_payload([a, b], [0, 1], pack) if literal else pickle.dumps(((Ref(a), Ref(b)), {}), 5),
            "items": [{"key": a, "encoding": "msgpack", "nframes": 1, "nbytes": 2},
                      {"key": b, "encoding": "msgpack", "nframes": 1, "nbytes": 2}]}
        if fdata is not None and i == first:
            header["func_data"] = fdata
        out.append((header, [msgpack.packb(i), msgpack.packb(1)]))
    return out


def answers_of(conn: _wire.Connection, n: int) -> Iterator[tuple[dict[str, Any], list[bytearray]]]:
    """The next ``n`` answers, whether each came alone or in a ``dones``."""
    while n > 0:
        header, frames = conn.recv()
        if header.get("op") != "dones":
            n -= 1
            yield header, frames
            continue
        for reply, k in zip(header["replies"], header["nframes"]):
            n -= 1
            yield reply, frames[:k]
            frames = frames[k:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=20, help="runs per write, as a worker batches short runs")
    ap.add_argument("--payload", choices=("literal", "pickle"), default="literal",
                    help="the arguments as client.get sends a plain call, or pickled with Refs")
    ap.add_argument("--messages", choices=("runs", "single"), default="runs",
                    help="a batch as one runs message (what a worker sends now), or a run message per run")
    args = ap.parse_args()
    fdata = dumps_callable(operator.add)
    fhash = func_hash(fdata)
    batches = [batch(i, min(args.batch, args.runs - i), fhash, fdata if i == 0 else None, args.payload == "literal")
               for i in range(0, args.runs, args.batch)]
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the executor
        mine.close()
        try:
            executor.Executor(_wire.Connection(theirs)).loop()
        finally:
            os._exit(0)
    theirs.close()
    conn = _wire.Connection(mine)
    start = time.perf_counter()
    for msgs in batches:
        if args.messages == "runs" and len(msgs) > 1:
            conn.send(*executor.runs_message(msgs))
        else:
            conn.send_many(msgs)
        answers = answers_of(conn, len(msgs))
        for header, _ in msgs:
            reply, frames = next(answers)
            if reply.get("op") != "done" or reply.get("id") != header["id"]:
                raise SystemExit(f"unexpected answer to run {header['id']}: {reply}")
            if msgpack.unpackb(frames[0]) != header["id"] + 1:
                raise SystemExit(f"wrong result for run {header['id']}")
    took = time.perf_counter() - start
    conn.send({"op": "shutdown"})
    os.waitpid(pid, 0)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"{args.runs:,} runs in batches of {args.batch}, {args.payload} payloads: "
          f"{1e6 * took / args.runs:.2f} µs per run (wall), "
          f"executor {1e6 * cpu / args.runs:.2f} µs of CPU per run, results checked")


if __name__ == "__main__":
    main()
