"""The Python executor a Go worker spawns: ``python -m shoal.executor`` (docs/protocol.md §3.5).

The worker passes one end of a socketpair as file descriptor ``SHOAL_EXECUTOR_FD`` and a
per-executor secret in ``SHOAL_EXECUTOR_TOKEN``. The executor handshakes (role 4), says
``ready``, then runs the ``run`` messages it receives one at a time:

1. load the callable from ``func_data`` (cloudpickle) or from its cache, by SHA-256 hash;
2. decode the dependency values listed in ``items`` from the payload frames;
3. unpickle ``payload`` = ``(args, kwargs)``, each :class:`shoal._refs.Ref` becoming the
   dependency's value as it is unpickled (no second walk over the arguments), or read a
   literal payload (a plain call from a dask graph: msgpack arguments, the dependencies'
   wire keys at known positions);
4. call, encode the result (:mod:`shoal._serialize`) and reply ``done``, or reply ``error``
   with the exception's type, message, formatted traceback and pickled form.

It exits on ``shutdown`` or when the socket closes.

Large dependency frames may arrive in shared-memory windows instead of through the socket
(:class:`Windows`, docs/protocol.md §3.5): the values are then built over the window's mapping
without a copy. A large result goes back in a *segment*: a fresh memfd the executor writes the
frames into, seals and passes with its ``done`` answer (:func:`write_segment`); a dependency the
worker holds in such a segment arrives as its descriptor and is mapped copy-on-write.

Once the worker has checked that it can read this process's memory (``keep``), a large numpy
array result is not written out at all: the executor *keeps* it (:meth:`Executor.keep_result`)
and answers with where its bytes are (``res``). A later run on this executor gets the object
itself; the worker copies the bytes out (``process_vm_readv``) only when the value leaves this
process, and has it forget the array (through a socket of its own, ``SHOAL_EXECUTOR_FORGET_FD``)
once it is done with it (docs/protocol.md §3.5, "Kept results").
"""

from __future__ import annotations

import array
import collections
import ctypes
import fcntl
import hashlib
import io
import logging
import mmap
import os
import pickle
import queue
import socket
import sys
import threading
import traceback
from time import time_ns
from typing import TYPE_CHECKING, Any, Callable, Sequence, Tuple, Union, cast

import msgpack

from . import _preload, _refs, _serialize, _wire, _worker
from ._segments import _SEALS, SEG_ALIGN, SEG_MIN, SEG_MIN_FRAME, write_segment  # noqa: F401  (SEG_ALIGN: tests)
from ._wire import Buffer
from .exceptions import CommClosedError, ProtocolError

if TYPE_CHECKING:
    from . import _speedups

logger = logging.getLogger("shoal.executor")

Header = dict[str, Any]


SHM_VERSION = 1
"""The shared-memory window protocol this executor speaks (announced in ``ready``)."""

DEFAULT_SHM_IDLE = 256 << 20

_PROBE = ctypes.create_string_buffer(os.urandom(16), 16)
"""Bytes the worker reads from this process's memory, at the address ``ready`` gives, to check
that it can (``process_vm_readv`` needs ptrace rights over the executor) before it says ``keep``
(``keep_probe`` in ``ready``)."""
"""Bytes of free windows kept mapped for reuse (``SHOAL_EXECUTOR_SHM_IDLE``)."""

class FdReceiver:
    """A socket's ``recv``/``recv_into`` that keeps the descriptors passed with SCM_RIGHTS, in
    the order they arrive (the worker passes a window's memfd with the message introducing it,
    and segments with the run that uses them)."""

    _ANCBUF = socket.CMSG_SPACE(64 * 4) if hasattr(socket, "CMSG_SPACE") else 0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fds: collections.deque[int] = collections.deque()
        self._flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

    def recv(self, bufsize: int, /) -> bytes:
        data, anc, flags, _ = self.sock.recvmsg(bufsize, self._ANCBUF, self._flags)
        if anc or flags & socket.MSG_CTRUNC:
            self._keep(anc, flags)
        return data

    def recv_into(self, buffer: Any, nbytes: int, /) -> int:
        view = memoryview(buffer)
        if nbytes:
            view = view[:nbytes]
        n, anc, flags, _ = self.sock.recvmsg_into([view], self._ANCBUF, self._flags)
        if anc or flags & socket.MSG_CTRUNC:
            self._keep(anc, flags)
        return n

    def _keep(self, anc: list[tuple[int, int, bytes]], flags: int) -> None:
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("descriptors passed by the worker were truncated")

    def close_fds(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())


def let_go(segs: list[mmap.mmap]) -> None:
    """A run's answer is sent: the segments it mapped are unmapped by the unmapper thread
    (unmapping a large input whose pages the task read takes milliseconds, 5 ms for 200 MB,
    which neither the answer nor the next run wait for; ``munmap`` runs without the GIL),
    unless something else, such as a result, still refers to them."""
    if segs:
        _unmapper().put(segs)


_unmap_queue: "queue.SimpleQueue[list[mmap.mmap]] | None" = None
_unmap_lock = threading.Lock()


def _unmapper() -> "queue.SimpleQueue[list[mmap.mmap]]":
    """The queue of a daemon thread that drops the mappings put into it: the last reference
    to an ``mmap`` goes there, and its ``munmap`` happens beside the executor's work."""
    global _unmap_queue
    with _unmap_lock:
        if _unmap_queue is None:
            q: queue.SimpleQueue[list[mmap.mmap]] = queue.SimpleQueue()

            def drop() -> None:
                while True:
                    maps = q.get()
                    del maps

            threading.Thread(target=drop, name="shoal-unmapper", daemon=True).start()
            _unmap_queue = q
        return _unmap_queue


class Windows:
    """The shared-memory windows the worker writes large frames into (docs/protocol.md §3.5).

    A window is a memfd, mapped once here (shared, writable: the values built over it are
    ordinary writable numpy arrays and Arrow buffers) and reused for later runs. A window is
    busy from the run that uses it until no Python object refers to its mapping any more —
    every memoryview, numpy array or Arrow buffer over it holds a reference to the ``mmap``
    object, so its reference count tells — and the next answer then reports it free
    (``shm_free``); the worker writes into a window only while it is free. Free windows beyond
    ``idle_limit`` bytes are unmapped and reported (``shm_drop``), so that the worker closes them.
    """

    def __init__(self, receiver: FdReceiver | None, idle_limit: int = DEFAULT_SHM_IDLE) -> None:
        self.receiver = receiver
        self.idle_limit = idle_limit
        self.maps: dict[int, mmap.mmap] = {}
        self.busy: set[int] = set()

    def attach(self, header: Header, frames: list[Buffer]) -> list[mmap.mmap]:
        """Map the windows a run introduces and the segments it passes, and put the frames
        they hold in place. Returns the segments' mappings, for the caller to keep until the
        run's answer is sent (let_go)."""
        new = header.get("shm_new") or ()
        segs = header.get("seg") or ()
        nsegs = 1 + max(int(n) for _, n, _, _ in segs) if segs else 0
        fds: list[int] = []
        if new or nsegs:
            if self.receiver is None or len(self.receiver.fds) < len(new) + nsegs:
                raise ProtocolError("a descriptor did not arrive with the run message")
            # the windows' descriptors come first, then the segments' (docs/protocol.md §3.5)
            fds = [self.receiver.fds.popleft() for _ in range(len(new) + nsegs)]
        seg_maps: list[mmap.mmap] = []
        try:
            for (wid, size), fd in zip(new, fds):
                old = self.maps.pop(int(wid), None)
                if old is not None:
                    raise ProtocolError(f"window {wid} introduced twice")
                self.maps[int(wid)] = mmap.mmap(fd, int(size), flags=mmap.MAP_SHARED,
                                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
            # a segment is mapped privately: a task writing into its input gets copy-on-write
            # pages, and the value the worker holds (and shares with its peers) never changes
            seg_maps = [mmap.mmap(fd, 0, access=mmap.ACCESS_COPY) for fd in fds[len(new):]]
        finally:
            for fd in fds:
                os.close(fd)
        for index, wid, n in header.get("shm") or ():
            m = self.maps.get(wid)
            if m is None or not 0 <= index < len(frames) or len(frames[index]) or not 0 <= n <= len(m):
                raise ProtocolError(f"bad window placement {[index, wid, n]}")
            frames[index] = memoryview(m)[:n]
            self.busy.add(wid)
        for index, n, off, size in segs:
            if not 0 <= n < nsegs or not 0 <= index < len(frames) or len(frames[index]) \
                    or off < 0 or size < 0 or off + size > len(seg_maps[n]):
                raise ProtocolError(f"bad segment placement {[index, n, off, size]}")
            frames[index] = memoryview(seg_maps[n])[off:off + size]
        return seg_maps

    def report(self, reply: Header) -> None:
        """Add to ``reply`` the windows that became free and those unmapped."""
        if not self.maps:
            return
        free = [wid for wid in self.busy if sys.getrefcount(self.maps[wid]) <= _FREE_REFS]
        if free:
            self.busy.difference_update(free)
            reply["shm_free"] = free
        idle = [wid for wid in self.maps if wid not in self.busy]
        total = sum(len(self.maps[wid]) for wid in idle)
        drop = []
        for wid in sorted(idle, key=lambda w: len(self.maps[w]), reverse=True):
            if total <= self.idle_limit:
                break
            total -= len(self.maps[wid])
            self.maps.pop(wid).close()
            drop.append(wid)
        if drop:
            reply["shm_drop"] = drop


# sys.getrefcount of a window nothing else refers to: the dict's reference and the argument's
_FREE_REFS = 2


class Executor:
    """Runs ``run`` messages from one worker connection (the state of one executor process).

    With ``segments``, results of at least :data:`SEG_MIN` bytes go back in sealed memfds
    (:func:`write_segment`); the worker asks for it (``SHOAL_EXECUTOR_SEGMENTS=1``)."""

    keep = False  # results may be kept (the worker said ``keep``); see __init__

    def __init__(self, conn: _wire.Connection, windows: Windows | None = None,
                 segments: bool = False, receiver: FdReceiver | None = None) -> None:
        self.conn = conn
        self.funcs: dict[str, Callable[..., Any]] = {}
        self.windows = windows
        self.segments = segments
        # descriptors passed by the worker (shared-memory windows; a seceding task's socket)
        self.receiver = receiver if receiver is not None else (windows.receiver if windows else None)
        # Answers held back while more runs of the same batch wait in the read buffer. The
        # worker writes a batch of short runs in one write and reads nothing else before their
        # answers, so buffered bytes are the rest of the batch: answering the batch with one
        # write saves the worker a read and a wake-up per task. Owned by the serving loop.
        self.held: list[tuple[Header | bytes, Sequence[Any]]] = []
        # Runs of a ``runs`` message not yet run, in order, as split_runs checked them; the
        # serving loop takes the next from here before it reads the socket (and so does the
        # thread that takes over serving when a run secedes). Answers go back as ``dones`` once
        # the worker has sent a ``runs``.
        # (A runs message read in C is one RunBatch here, until its last run is handed out.)
        self.pending: collections.deque[tuple[list[Any], list[Any]] | _speedups.RunBatch] = collections.deque()
        self.batching = False
        # set when the serving loop ends (shutdown, or the worker's socket closed)
        self.finished = threading.Event()
        # threads started ahead, each waiting to take over serving when a task secedes: starting
        # a thread waits for it to get the GIL (up to the 5 ms switch interval), which cost a
        # seceding task 0.8 ms on average when done in secede
        self._standby: queue.SimpleQueue[threading.Thread] = queue.SimpleQueue()
        self._wake: dict[threading.Thread, threading.Event] = {}
        self._spawn: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._spawner: threading.Thread | None = None
        # results kept in this process, by the id of the run that made them (the worker says
        # ``keep`` to turn this on, and writes each id to the forget socket once it is done)
        self.keep = False
        self.kept: dict[int, Any] = {}
        self.ran = 0  # when the last run started or ended (time_ns): trim_when_idle watches it

    def take_standby(self) -> threading.Thread:
        """A thread ready to serve the worker's socket once woken (:meth:`hand_over`); taken
        before a task secedes, so that failing to get one (no threads left) fails the secede
        before the worker is told anything."""
        if self._spawner is None:
            self._spawner = threading.Thread(target=self._spawn_standbys, name="shoal-executor-spawner",
                                             daemon=True)
            self._spawner.start()
            self._spawn.put(True)
        try:
            t = self._standby.get(timeout=1.0)
        except queue.Empty:  # the spawner is behind: make one here
            t = self._new_standby()
        self._spawn.put(True)  # one more for the next secede
        return t

    def hand_over(self, t: threading.Thread) -> None:
        """Let standby thread ``t`` serve the worker's socket (the caller's task seceded)."""
        self._wake.pop(t).set()

    def _spawn_standbys(self) -> None:
        while self._spawn.get():
            try:
                self._standby.put(self._new_standby())
            except RuntimeError as exc:  # can't start new thread: secede takes one itself, or fails
                logger.warning("cannot start a standby serving thread: %s", exc)

    def _new_standby(self) -> threading.Thread:
        wake = threading.Event()

        def standby() -> None:
            wake.wait()
            try:
                self.loop()
            except BaseException:  # noqa: BLE001 - nobody else serves the worker now
                logger.exception("the executor's serving thread failed; exiting")
                os._exit(70)

        t = threading.Thread(target=standby, name="shoal-executor", daemon=True)
        self._wake[t] = wake
        t.start()
        return t

    def serve(self) -> None:
        """Say ``ready``, then handle messages until ``shutdown`` or the socket closes.

        A task that secedes (shoal.secede, from get_client/worker_client) hands the serving of
        the worker's socket to a new thread and goes on in this one; serve returns once the
        serving ends, whichever thread does it then."""
        ready: Header = {"op": "ready", "pid": os.getpid(), "python": sys.version.split()[0]}
        if self.windows is not None:
            ready["shm"] = SHM_VERSION
            ready["segments"] = 1
            ready["keep_probe"] = [ctypes.addressof(_PROBE), _PROBE.raw]
        ready["batch"] = 1  # takes runs, answers with dones (docs/protocol.md §3.5)
        self.conn.send(ready)
        self.loop()
        self.finished.wait()

    def loop(self) -> None:
        """Serve the worker's socket. Returns at shutdown, when the socket closes, or after a
        task this loop ran seceded (another thread serves by then)."""
        conn = self.conn
        recv_raw, header_of, send, run, windows = conn.recv_raw, conn.header_of, conn.send, self.run, self.windows
        held = self.held = []
        pending = self.pending
        while True:
            if held and not pending and not conn.buffered():
                self.send_held()
            if pending:
                head = pending[0]
                if type(head) is _RunBatch:  # a runs message read in C: its runs, one at a time
                    if not head.left:  # (another thread ran its last run)
                        _drop_head(pending, head)
                        continue
                    plugins = _preload.plugins()
                    # (windows in use: the Python path's answer reports them when they are free)
                    if plugins or windows is not None and windows.busy:
                        ran = head.take()
                    else:  # the plain calls in a row, answered into held without a pass each
                        stopped = head.run_many(held, _worker_flags)
                        self.ran = time_ns()
                        if stopped is None:
                            _drop_head(pending, head)
                            continue
                        ran = stopped
                    if not head.left:
                        _drop_head(pending, head)
                    if len(ran) == 2:  # a plain call, run and answered in C: (done header, [frame])
                        self.ran = time_ns()
                        if _worker._seceding and self.answer_encoded_seceded(ran):
                            return
                        if held or pending or conn.buffered():
                            held.append(ran)
                        else:
                            send(*ran)
                        continue
                    if ran[0] != 3:  # it ran in C, and raised or returned a result for Python
                        if not self.answer_ran(ran):
                            return
                        continue
                    entry, frames = ran[1], ran[2]  # the Python path's run
                else:
                    entry, frames = cast(Tuple[list[Any], list[Any]], pending.popleft())  # a run of a runs message
                if entry[5] is None or "timeout" not in entry[5]:  # (timeout: the profiler is on)
                    started = self.ran = time_ns()
                    reply, out = self.run_entry(entry, frames)
                    frames = []
                    if not self.answer(reply, out, started):
                        return
                    del out, reply
                    continue
                header = run_header(entry)
            else:
                try:
                    raw, frames = recv_raw()
                except CommClosedError:
                    self.finished.set()
                    return
                if _runs_batch is not None:  # a runs message this process runs in C
                    batch = _runs_batch(raw, frames, self.funcs, self, _worker.enter, _worker.leave, _unpack_entry)
                    if batch is not None:
                        pending.append(batch)
                        self.batching = True
                        self.ran = time_ns()
                        frames = []
                        continue
                header = header_of(raw)
                del raw
            op = header["op"]
            if op == "runs":
                try:
                    pending.extend(split_runs(header, frames))
                    self.batching = True
                except ProtocolError as exc:  # id 0: the worker treats the executor as dead
                    conn.send({"op": "error", "code": "protocol-error", "id": 0, "message": str(exc)})
                frames = []
                continue
            if op == "run":
                started = self.ran = time_ns()
                # profiler: None unless it is on (the worker then sends timeout)
                sampling = SAMPLER.begin(header) if "timeout" in header else None
                segs: list[mmap.mmap] = []  # this run's input segments, let go of once answered
                if windows is None:
                    reply, out = run(header, frames)
                elif "shm" not in header and "seg" not in header and not windows.maps:
                    reply, out = run(header, frames)
                else:
                    reply, out = self.run_windows(header, frames, segs)
                    del frames
                if sampling is not None:
                    SAMPLER.end(sampling, reply)
                answered = self.answer(reply, out, started)
                # drop the inputs and the result before waiting for the next message: an idle
                # executor must not hold the last task's values (the worker's memory limit
                # counts executor memory)
                del out, reply
                frames = []
                if segs:
                    let_go(segs)
                del segs
                if not answered:
                    return
            elif op == "keep":  # not answered
                self.keep = bool(self.segments)
            elif op == "preload":
                # the worker waits for this answer before its next run: nothing is held back
                err = _preload.current().apply(str(header.get("name", "")), str(header.get("reason", "")),
                                               bytes(frames[0]) if frames else b"")
                send({"op": "ok", "message": err or ""})
                frames = []
            elif op == "shutdown":
                _preload.current().close()
                self.finished.set()
                return
            elif op == "error":
                logger.error("worker sent an error: %s", header.get("message"))
            else:
                self.conn.send({"op": "error", "code": "unknown-op", "id": header.get("id", 0),
                                "message": f"executor does not serve op {op!r}"})

    def send_held(self) -> None:
        """Send the answers held back, in order, with one write: consecutive small ones as one
        ``dones`` message (once the worker has shown it reads them by sending ``runs``), the
        rest as messages of their own."""
        held = self.held
        if self.batching and len(held) > 1:
            wire = _answers_wire(held, self.conn.limits.max_header) if _answers_wire is not None else None
            if wire is not None:  # all encoded in C already (answers of plain calls): one write
                self.conn.send_wire(wire)
            else:
                self.conn.send_many(group_answers(held))
        else:
            self.conn.send_many(held)
        held.clear()

    def answer(self, reply: Header, out: list[Any], started: int) -> bool:
        """Answer a run that started at ``started``: held back while more runs of its batch
        wait, or sent, its large result in a segment. Returns False when the task seceded: its
        answer went on its own socket, and another thread serves the worker's socket now."""
        # (a global read while no task secedes: took_own_socket's own first check)
        task_conn = _worker.took_own_socket() if _worker._seceding else None
        if task_conn is not None:
            self.answer_seceded(task_conn, reply, out, started)
            return False
        fd = -1
        if "_keep" in reply:
            fd, out = self.keep_result(reply, out, reply.pop("_keep"))
        elif self.segments and reply["op"] == "done" and reply["items"][0]["nbytes"] >= SEG_MIN:
            fd, out = segment_result(reply, out)
        # when it ran, by this machine's clock: the worker reads a batch's answers together,
        # so it cannot tell on its own
        self.ran = stopped = time_ns()
        reply["start"], reply["stop"] = started, stopped
        if self.windows is not None:
            # after the result moved to its segment: it no longer holds a window
            self.windows.report(reply)
        held = self.held
        if fd < 0:
            if held or self.pending or self.conn.buffered():
                held.append((reply, out))  # sent with the rest of the batch
            else:
                self.conn.send(reply, out)
        else:
            if held:
                self.send_held()
            try:
                send_with_fd(self.conn, reply, out, fd)
            finally:
                os.close(fd)
        return True

    def answer_ran(self, ran: tuple[Any, ...]) -> bool:
        """Answer a run that ran in C and raised, ``(1, exception, (id, key, task), started)``,
        or returned a result Python encodes, ``(2, result, (id, key, keep), started)``: as
        :meth:`call` does, an error is answered before its task leaves. :meth:`answer`'s
        return."""
        kind, value, run_of, started = ran
        out: list[Any] = []
        if kind == 1:
            reply = compiled_error(run_of[0], value, run_of[2])
        else:
            task_id, key, keep = run_of
            reply, out = self.result_reply(task_id, key, keep, value)
        del value, ran
        return self.answer(reply, out, started)

    def answer_encoded_seceded(self, answer: tuple[bytes, list[bytes]]) -> bool:
        """After a run in C: when its task seceded, send its answer (a done header encoded, and
        its frame) on the task's own socket and return True (another thread serves the
        worker's socket now)."""
        task_conn = _worker.took_own_socket()
        if task_conn is None:
            return False
        self.ran = time_ns()
        try:
            task_conn.send(*answer)
        except CommClosedError:
            pass  # the worker is gone
        finally:
            task_conn.close()
        return True

    def answer_seceded(self, task_conn: _wire.Connection, reply: Header, out: list[Any], started: int) -> None:
        """Send a seceded task's answer on its own socket (its large result in a segment)."""
        fd = -1
        kept_value = reply.pop("_keep", None)
        if kept_value is not None:
            out = self.unkept(kept_value, out)  # a seceded task's answer is never kept
        if self.segments and reply["op"] == "done" and reply["items"][0]["nbytes"] >= SEG_MIN:
            fd, out = segment_result(reply, out)
        self.ran = stopped = time_ns()
        reply["start"], reply["stop"] = started, stopped
        try:
            if fd < 0:
                task_conn.send(reply, out)
            else:
                send_with_fd(task_conn, reply, out, fd)
        except CommClosedError:
            pass  # the worker is gone
        finally:
            if fd >= 0:
                os.close(fd)
            task_conn.close()

    def load_func(self, digest: str, data: bytes | bytearray | None) -> Callable[..., Any]:
        """The callable with this hash, unpickled from ``data`` the first time."""
        fn = self.funcs.get(digest)
        if fn is not None:
            return fn
        if not data:
            raise LookupError(f"function {digest} is not known to this executor and was not sent")
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"function data does not match its hash {digest}")
        loaded = pickle.loads(data)
        if not callable(loaded):
            raise TypeError(f"function {digest} unpickled to a non-callable {type(loaded).__name__}")
        func: Callable[..., Any] = loaded
        self.funcs[digest] = func
        return func

    def run_windows(self, header: Header, received: list[bytearray],
                    segs: list[mmap.mmap]) -> tuple[Header, list[Any]]:
        """:meth:`run` with the frames held in windows and segments put in place first; the
        segments' mappings are added to ``segs``, for the caller to let go of once the answer
        is sent."""
        frames: list[Buffer] = list(received)
        del received[:]
        if "shm" in header or "shm_new" in header or "seg" in header:
            assert self.windows is not None
            try:
                segs.extend(self.windows.attach(header, frames))
            except BaseException as exc:  # noqa: BLE001 - reported to the worker
                return error_reply(header.get("id", 0), exc, skip=0,
                                   prefix="could not map the shared memory holding the arguments: "), []
        return self.run(header, frames)

    def run(self, header: Header, frames: Sequence[Buffer]) -> tuple[Header, list[Any]]:
        """Run one task; returns the reply header and frames (``done`` or ``error``)."""
        task_id = header.get("id", 0)
        try:
            fn = self.funcs.get(header.get("func"))  # type: ignore[arg-type]
            if fn is None:
                fn = self.load_func(str(header.get("func", "")), header.get("func_data"))
            items = header.get("items")
            held = None
            if "res" in header:
                try:
                    held = {int(i): self.kept[int(rid)] for i, rid in header["res"]}
                except KeyError as exc:
                    raise LookupError(f"a value kept in this executor (run {exc}) is gone") from None
            values = decode_items(items, frames, held) if items else {}
            args, kwargs = load_payload(header.get("payload"), values)
        except BaseException as exc:  # noqa: BLE001 - reported to the worker
            return error_reply(task_id, exc, skip=0), []
        return self.call(task_id, str(header.get("key", "")), bool(header.get("keep")), fn, args, kwargs)

    def run_entry(self, run: list[Any], frames: Sequence[Buffer]) -> tuple[Header, list[Any]]:
        """:meth:`run` for a run of a ``runs`` message as :func:`split_runs` checked it,
        ``[id, key, func, payload, items, extra]`` with no other extra field than ``keep`` and
        ``func_data``: what run does, without making a run header first. (The million-task
        graph's executors ran 500,000 such runs each, and a header map for each, read back
        field by field, was a tenth of their time: docs/performance.md.)"""
        task_id, key, fh, payload, items, extra = run
        fn = self.funcs.get(fh)
        plugins = _preload.plugins()
        if fn is not None and _run_plain is not None and not plugins:
            done = _run_plain(_worker.enter, _worker.leave, self, fn, task_id, key, payload, items, frames)
            if done is not None:  # it ran (else nothing was called: the path below runs it)
                kind, value, out = done
                if kind == 0:
                    return value, out
                if kind == 1:  # (out: the task, still entered)
                    return compiled_error(task_id, value, out), []
                return self.result_reply(task_id, key, bool(extra and extra.get("keep")), value)
        try:
            if fn is None:
                fn = self.load_func(fh, extra.get("func_data") if extra else None)
            values = decode_items(items, frames) if items else {}
            args, kwargs = load_payload(payload, values)
        except BaseException as exc:  # noqa: BLE001 - reported to the worker
            return error_reply(task_id, exc, skip=0), []
        return self.call(task_id, key, bool(extra and extra.get("keep")), fn, args, kwargs)

    def call(self, task_id: int, key: str, keep: bool, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[Header, list[Any]]:
        """Call the task's function and make its answer (:meth:`run`'s second half): ``keep``
        says the worker lets this executor keep the result."""
        plugins = _preload.plugins()
        if plugins:
            _preload.current().transition(key, "ready", "executing")
        task = _worker.enter(self, task_id, key)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            if plugins:
                _preload.current().transition(key, "executing", "error", exception=exc)
            return error_reply(task_id, exc, skip=1), []
        finally:
            _worker.leave(task)
        if plugins:
            _preload.current().transition(key, "executing", "memory")
        return self.result_reply(task_id, key, keep, result)

    def result_reply(self, task_id: int, key: str, keep: bool, result: Any) -> tuple[Header, list[Any]]:
        """The answer to a run that returned ``result`` (:meth:`call`'s end)."""
        # a scalar holds no future, is never kept and is always contiguous
        plain = type(result) in _SCALARS
        if type(result) in _serialize.MSGPACK_SCALARS:
            try:  # what _serialize.encode does first for it, without the calls
                frame = _pack_scalar(result)
            except Exception:  # noqa: BLE001 - an int beyond 64 bits, a str msgpack refuses
                pass
            else:
                item = {"key": key, "encoding": _serialize.MSGPACK, "nframes": 1,
                        "nbytes": len(frame)}
                return {"op": "done", "id": task_id, "items": [item]}, [frame]
        exported: list[Any] = []
        if not plain:
            _worker.exporting(exported)  # futures pickled into the result are named here
        rows = not plain and self.keep and keep and keepable_rows(result)
        try:
            if rows:
                # kept as it is (a view of whole rows): the pickle is that of a contiguous array
                # of its shape and dtype, whose bytes the worker gathers row by row if it must
                encoding, out = _serialize.encode(_empty_like_contiguous(result), None)
            else:
                if not plain:
                    result = contiguous(result)
                encoding, out = _serialize.encode(result, SEG_MIN if self.segments else None)
        except BaseException as exc:  # noqa: BLE001
            return error_reply(task_id, exc, skip=0,
                               prefix=f"could not serialize the result of {key}: "), []
        finally:
            if not plain:
                _worker.exporting(None)
        if len(out) == 1:
            f = out[0]
            size = len(f) if type(f) is bytes else f.nbytes if type(f) is _serialize.ArrowStream \
                else memoryview(f).nbytes
        else:
            size = _serialize.nbytes(out)
        item = {"key": key, "encoding": encoding, "nframes": len(out), "nbytes": size}
        reply: Header = {"op": "done", "id": task_id, "items": [item]}
        if exported:  # the scheduler keeps them while the result lives, for its readers to claim
            reply["keys"] = list(dict.fromkeys(f.key for f in exported))
            _worker.retain(exported)
        elif rows or self.keep and keep and encoding == _serialize.PICKLE and len(out) == 2 \
                and keepable(result):
            reply["_keep"] = result  # taken out before the reply is sent
        return reply, out

    def keep_result(self, reply: Header, out: list[Any], value: Any) -> tuple[int, list[Any]]:
        """Keep ``value`` (a result :func:`keepable` or :func:`keepable_rows` accepted, pickled
        as ``out``: the pickle and the array's bytes, or those of an uninitialised array of its
        shape for a view of rows) in this process instead of writing it out: ``reply`` says
        where its bytes are (``res``) and the frame goes empty. Returns the descriptor of a
        segment (-1: none) and the frames to send, as :func:`segment_result` does."""
        if len(out) != 2 or memoryview(out[1]).nbytes != value.nbytes:  # cannot happen
            return segment_result(reply, self.unkept(value, out))
        self.kept[int(reply["id"])] = value
        flags = value.flags
        if flags.c_contiguous or flags.f_contiguous:
            reply["res"] = [[1, value.ctypes.data, value.nbytes, 0, 0]]
        else:  # whole rows (keepable_rows)
            reply["res"] = [[1, value.ctypes.data, value.nbytes, value.shape[1] * value.itemsize, value.strides[0]]]
        return -1, [out[0], b""]

    def unkept(self, value: Any, out: list[Any]) -> list[Any]:
        """The frames of a result that was to be kept but is sent after all: for a view of rows
        ``out`` is the pickle of a placeholder, so the view itself is encoded."""
        flags = value.flags
        if flags.c_contiguous or flags.f_contiguous:
            return out
        return _serialize.encode(contiguous(value), SEG_MIN if self.segments else None)[1]

    def forget(self, ids: Sequence[Any]) -> None:
        """Drop kept results the worker no longer needs from this process."""
        for rid in ids:
            self.kept.pop(int(rid), None)

    def forget_from(self, fd: int) -> threading.Thread:
        """Forget the kept results whose run ids (8 bytes each, little-endian) the worker
        writes to ``fd``, from a thread of their own: a value is freed when the worker drops it,
        not after the task this process is running (the worker never names one a run it sent
        still needs)."""
        def serve() -> None:
            pending = b""
            with os.fdopen(fd, "rb", buffering=0) as f:
                while True:
                    try:
                        chunk = f.read(1 << 16)
                    except OSError:
                        return
                    if not chunk:
                        return  # the worker is gone
                    pending += chunk
                    n = len(pending) // 8 * 8
                    ids = array.array("Q", pending[:n])
                    if sys.byteorder != "little":
                        ids.byteswap()
                    pending = pending[n:]
                    self.forget(ids)
                    del ids

        t = threading.Thread(target=serve, name="shoal-forget", daemon=True)
        t.start()
        return t


def keepable(value: Any) -> bool:
    """Whether a result can stay in the executor for the worker to read when it leaves: a plain
    numpy array of at least SEG_MIN bytes, contiguous, without Python objects, whose memory
    numpy allocated. An array over other memory (an input's window or segment mapping, which
    is unmapped after the run; bytes; a file) is written out as before, and so is a view of
    less than half of the array it is part of (keeping it would keep the whole array, which
    the worker counts as the view's size)."""
    if not _plain_array(value):
        return False
    flags = value.flags
    return (flags.c_contiguous or flags.f_contiguous) and _owns_most_of_its_memory(value)


def _plain_array(value: Any) -> bool:
    """A numpy.ndarray itself (no subclass) of at least SEG_MIN bytes, without Python objects."""
    return (type(value).__name__ == "ndarray" and type(value).__module__ == "numpy"
            and not value.dtype.hasobject and value.nbytes >= SEG_MIN)


def _owns_most_of_its_memory(value: Any) -> bool:
    """Whether ``value``'s memory was allocated by numpy (the array at the end of its chain of
    bases owns its data) and ``value`` is at least half of that array."""
    import numpy as np

    base = value
    while isinstance(base.base, np.ndarray):
        base = base.base
    return base.base is None and base.flags.owndata and base.nbytes <= 2 * value.nbytes


KEEP_ROW_MIN = 4096
"""Rows shorter than this are not gathered one by one: such a view is made contiguous."""


def keepable_rows(value: Any) -> bool:
    """Whether a result can be kept as the view it is: a 2-D numpy array of whole rows of a
    larger array (``x[:, a:b]``, as dask's slices and overlaps return), rows of at least
    KEEP_ROW_MIN bytes, that :func:`keepable` would keep once made contiguous. Keeping it saves
    the copy; the worker gathers its rows only if the value must leave this process."""
    if not _plain_array(value) or value.ndim != 2:
        return False
    flags = value.flags
    if flags.c_contiguous or flags.f_contiguous:
        return False
    row = value.shape[1] * value.itemsize
    s0, s1 = value.strides
    if s1 != value.itemsize or s0 < row or value.shape[0] < 1 or row < KEEP_ROW_MIN:
        return False
    return _owns_most_of_its_memory(value)


def _empty_like_contiguous(value: Any) -> Any:
    """An uninitialised C-contiguous array of ``value``'s shape and dtype (its pickle is what a
    kept view's readers unpickle; its pages are never touched)."""
    import numpy as np

    return np.empty(value.shape, dtype=value.dtype)


def contiguous(value: Any) -> Any:
    """``value``, or a contiguous copy of it if it is a non-contiguous numpy array (a slice's
    view, as dask.array's rechunks and overlaps return) of at least SEG_MIN_FRAME bytes.

    numpy pickles a non-contiguous array's data in band: copied out of the array, into the
    pickle, into the result's segment, and copied again by every task that unpickles it. A
    contiguous array goes out of band: one copy here, one into the segment, and readers
    unpickle it over the segment's mapping without a copy (docs/performance.md, "Arrays")."""
    if type(value).__name__ != "ndarray" or type(value).__module__ != "numpy":
        return value
    flags = value.flags
    if flags.c_contiguous or flags.f_contiguous or value.dtype.hasobject or value.nbytes < SEG_MIN_FRAME:
        return value
    import numpy as np

    return np.ascontiguousarray(value)


def write_arrow_segment(frame: _serialize.ArrowStream) -> int:
    """A sealed memfd holding ``frame``'s IPC stream, written with one copy."""
    fd = os.memfd_create("shoal-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        n = _serialize.write_arrow_fd(frame.table, fd)
        if n != frame.nbytes:
            raise OSError(f"wrote {n} bytes of an Arrow stream of {frame.nbytes}")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def segment_result(reply: Header, frames: list[Any]) -> tuple[int, list[Any]]:
    """Put a done answer's large frames into a segment: returns its descriptor (-1 when the
    frames stay in the message: too few large ones, or the segment could not be made) and the
    frames to send; ``reply`` gets the placements (``seg``)."""
    if len(frames) == 1 and type(frames[0]) is _serialize.ArrowStream:
        frame = frames[0]
        try:
            fd = write_arrow_segment(frame)
        except OSError as exc:
            logger.warning("could not put a result in shared memory, sending it through the socket: %s", exc)
            return -1, [_serialize.write_arrow(frame.table)]
        reply["seg"] = [[0, 0, frame.nbytes]]
        return fd, [b""]
    large = sum(n for n in (len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames)
                if n >= SEG_MIN_FRAME)
    if large < SEG_MIN:
        return -1, frames
    try:
        fd, at, out = write_segment(frames)
    except OSError as exc:  # no memfd (old kernel, sandbox) or no memory for it: the socket
        logger.warning("could not put a result in shared memory, sending it through the socket: %s", exc)
        return -1, frames
    reply["seg"] = at
    return fd, out


def send_with_fd(conn: _wire.Connection, header: Header, frames: Sequence[Buffer], fd: int) -> None:
    """Send one message with ``fd`` attached to its first bytes (SCM_RIGHTS), as the worker
    expects: a descriptor travels with the message that declares it. The executor is the
    connection's only writer."""
    parts = _wire.encode_frames([_wire.pack_header(header), *frames])
    data = b"".join(bytes(p) if type(p) is not bytes else p for p in parts)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
    try:
        n = conn.sock.sendmsg([data], anc)
        if n < len(data):
            conn.sock.sendall(memoryview(data)[n:])
    except OSError as exc:
        raise CommClosedError(f"connection to {conn.address or 'worker'} lost: {exc}") from exc


# A ``dones`` message holds at most this many answers, each of frames that are bytes of at most
# _DONES_BYTES in all; a larger answer goes on its own.
_DONES_MAX = 64
_DONES_BYTES = 64 << 10


Answer = Tuple[Union[Header, bytes], Sequence[Any]]  # a reply (a map, or encoded already) and its frames


def group_answers(answers: Sequence[Answer]) -> list[Answer]:
    """The messages that send ``answers`` in order: runs of small ones as ``dones`` messages
    (docs/protocol.md §3.5), the others as they are. A reply may come encoded already (an
    answer made in C): a ``dones`` holding one is encoded here, the others with it."""
    out: list[Answer] = []
    replies: list[Header | bytes] = []
    counts: list[int] = []
    frames: list[Any] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if len(replies) == 1:
            out.append((replies[0], frames.copy()))
        elif replies:
            out.append((dones_header(replies, counts), frames.copy()))
        replies.clear()
        counts.clear()
        frames.clear()
        size = 0

    for reply, fr in answers:
        n = 0
        for f in fr:
            if type(f) is not bytes:
                n = -1
                break
            n += len(f)
        if n < 0 or n > _DONES_BYTES:
            flush()
            out.append((reply, fr))
            continue
        if len(replies) >= _DONES_MAX or size + n > _DONES_BYTES:
            flush()
        replies.append(reply)
        counts.append(len(fr))
        frames.extend(fr)
        size += n
    flush()
    return out


def dones_header(replies: Sequence[Header | bytes], counts: list[int]) -> Header | bytes:
    """The header of a ``dones`` message: a map, or encoded (as pack_header would encode the
    map) when a reply comes encoded."""
    if all(type(r) is not bytes for r in replies):
        return {"op": "dones", "replies": list(replies), "nframes": counts.copy()}
    n = len(replies)
    parts = [_DONES_START, bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")]
    parts.extend(r if type(r) is bytes else _wire.pack_header(r) for r in replies)  # type: ignore[arg-type]
    parts.append(_NFRAMES_KEY)
    parts.append(_wire.packb(counts))
    return b"".join(parts)


# {"op": "dones", "replies": ... as msgpack writes its start (a map of three), and the key after
_DONES_START = b"\x83" + msgpack.packb("op") + msgpack.packb("dones") + msgpack.packb("replies")
_NFRAMES_KEY = msgpack.packb("nframes")

_RUN_FIELDS = ("op", "id", "key", "func", "payload", "items")


def runs_message(runs: Sequence[tuple[Header, Sequence[Any]]]) -> tuple[Header, list[Any]]:
    """The ``runs`` message a worker sends for these run messages (what :func:`split_runs`
    reads), for tests and benchmarks that play the worker."""
    entries = []
    for h, _ in runs:
        items = [[it["key"], it["encoding"], it.get("nframes", 1), it.get("nbytes", 0)] for it in h.get("items") or ()]
        extra = {k: v for k, v in h.items() if k not in _RUN_FIELDS}
        entries.append([h["id"], h["key"], h["func"], h.get("payload", b""), items, extra or None])
    return ({"op": "runs", "runs": entries, "nframes": [len(f) for _, f in runs]},
            [f for _, fr in runs for f in fr])


def _run_extra_ok(extra: Any) -> bool:
    """Whether a runs entry's extra map holds only the optional fields of a run, well typed."""
    if type(extra) is not dict:
        return False
    for k, v in extra.items():
        if k == "func_data":
            ok = type(v) in (bytes, bytearray)
        elif k == "timeout":
            ok = type(v) in (int, float) and v >= 0
        elif k == "keep":
            ok = type(v) in (int, bool)
        else:
            ok = False
        if not ok:
            return False
    return True


def split_runs(header: Header, frames: list[Any]) -> list[tuple[list[Any], list[Any]]]:
    """The runs of a ``runs`` message (docs/protocol.md §3.5), checked, each with its frames:
    ``nframes`` says how many, in order. An entry is ``[id, key, func, payload, items,
    extra]``, its items ``[key, encoding, nframes, nbytes]`` (decode_items takes them so) and
    extra a map of the other fields, or nil. The loop runs an entry as it is
    (:meth:`Executor.run_entry`), or as the run header :func:`run_header` makes of it."""
    runs, counts = header.get("runs"), header.get("nframes")
    if not isinstance(runs, list) or not isinstance(counts, list) or len(runs) != len(counts):
        raise ProtocolError("a runs message needs lists runs and nframes of the same length")
    out: list[tuple[list[Any], list[Any]]] = []
    i = 0
    for run, n in zip(runs, counts):
        if type(run) is not list or len(run) != 6 or type(run[0]) is not int or run[0] < 0 \
                or type(run[1]) is not str or type(run[2]) is not str or type(run[3]) not in (bytes, bytearray) \
                or type(run[4]) is not list or run[5] is not None and not _run_extra_ok(run[5]):
            raise ProtocolError("a runs message holds something other than a run")
        if type(n) is not int or n < 0 or i + n > len(frames):
            raise ProtocolError(f"a runs message declares more frames than its {len(frames)}")
        out.append((run, frames[i : i + n]))
        i += n
    if i != len(frames):
        raise ProtocolError(f"a runs message's runs declare {i} of its {len(frames)} frames")
    return out


def run_header(run: list[Any]) -> Header:
    """The run header of a checked ``runs`` entry (:func:`split_runs`)."""
    h: Header = {"op": "run", "id": run[0], "key": run[1], "func": run[2], "payload": run[3], "items": run[4]}
    if run[5]:
        h.update(run[5])
    return h


def decode_items(items: Sequence[Any], frames: Sequence[Buffer],
                 held: dict[int, Any] | None = None) -> dict[str, Any]:
    """Decode the values described by ``items`` from consecutive payload frames; those whose
    index is in ``held`` are that object (kept in this executor), their frames skipped. An item
    is a map (``key``, ``encoding``, ``nframes``, ``nbytes``) or, in a ``runs`` message, the list
    of those four."""
    values: dict[str, Any] = {}
    pos = 0
    nframes = len(frames)
    for i, it in enumerate(items):
        listed = type(it) is list
        if listed:
            key, n = it[0], it[2] or 1
        else:
            key, n = it["key"], it.get("nframes") or 1
        if type(n) is not int:
            n = int(n)
        end = pos + n
        if end > nframes:
            raise ValueError(f"item {key!r} declares {n} frames; too few were sent")
        if type(key) is not str:
            key = str(key)
        if held is not None and i in held:
            values[key] = held[i]
        else:
            enc = it[1] if listed else it["encoding"]
            if n == 1 and enc == _serialize.MSGPACK:  # most small values: decode's first case
                values[key] = _unpackb(frames[pos], raw=False, strict_map_key=False)
            else:
                values[key] = _serialize.decode(str(enc), frames[pos:end])
        pos = end
    return values


# ---------------------------------------------------------------------------------------------
# Statistical profiler (docs/protocol.md, "profile"). Off unless the worker's run message
# carries ``timeout`` (the sampling interval, seconds), which it does only while the profiler
# is on; then a daemon thread reads the running task's stack with sys._current_frames() every
# interval, and the run's ``done``/``error`` answer carries its samples, aggregated by stack,
# as ``samples``. The thread exits after a second with no sampled run. Costs nothing while off:
# one dict lookup per run.


class Sampler:
    """Samples the call stacks of the threads running profiled tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, collections.Counter[str]] = {}  # thread id -> its run's samples
        self._thread: threading.Thread | None = None
        self._interval = 0.01
        self._last = 0.0
        self._stop_at = frozenset({Executor.run.__code__, Executor.run_windows.__code__})

    def begin(self, header: Header) -> collections.Counter[str] | None:
        interval = header.get("timeout")
        if not interval:
            return None
        counts: collections.Counter[str] = collections.Counter()
        with self._lock:
            self._interval = max(float(interval), 0.001)
            self._running[threading.get_ident()] = counts
            self._last = _monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._sample, name="shoal-profiler", daemon=True)
                self._thread.start()
        return counts

    def end(self, counts: collections.Counter[str], reply: Header) -> None:
        with self._lock:
            self._running.pop(threading.get_ident(), None)
            self._last = _monotonic()
        if counts:
            reply["samples"] = [{"group": "", "stack": st, "count": n} for st, n in counts.items()]

    def stack(self, frame: Any) -> str:
        """The frames from the task's function inward, outermost first, as "name (file:line)"."""
        names: list[str] = []
        while frame is not None and len(names) < 256:
            code = frame.f_code
            if code in self._stop_at:
                break
            names.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})")
            frame = frame.f_back
        names.reverse()
        return ";".join(names[:128])

    def _sample(self) -> None:
        while True:
            _sleep(self._interval)
            with self._lock:
                if not self._running and _monotonic() - self._last > 1.0:
                    self._thread = None
                    return
                running = list(self._running.items())
            if not running:
                continue
            frames = sys._current_frames()
            for tid, counts in running:
                f = frames.get(tid)
                if f is not None:
                    st = self.stack(f)
                    if st:
                        counts[st] += 1
            del frames


def _monotonic() -> float:
    import time

    return time.monotonic()


def _sleep(s: float) -> None:
    import time

    time.sleep(s)


SAMPLER = Sampler()

# --------------------------------------------------------------------------------------------- end of the profiler


_SCALARS = _serialize.MSGPACK_SCALARS | {bytes}


class _RefUnpickler(pickle.Unpickler):
    """Unpickles a payload with every ``Ref(key)`` turned into ``values[key]`` on the way.

    A pickled Ref is a call of the class ``shoal._refs.Ref`` (its ``__reduce__``), looked up
    once per payload through ``find_class``; handing back ``values.__getitem__`` instead puts
    the value where the Ref was, at any depth, without walking the arguments afterwards.
    """

    values: dict[str, Any]  # set by load_payload (an __init__ of its own cost 0.4 µs a run)

    def find_class(self, module: str, name: str) -> Any:
        if name == "Ref" and module == _REFS_MODULE:
            return self.values.__getitem__
        return super().find_class(module, name)


_REFS_MODULE = _refs.Ref.__module__
_unpackb = msgpack.unpackb
# One packer for every scalar result, whatever thread runs the task: packing None, a bool, an
# int, a float or a str calls no Python code and never lets go of the interpreter lock, so no
# two packs interleave, and a failed one (an int beyond 64 bits) empties the buffer before it
# raises. A new packer per result (_wire.packb) cost 0.26 µs against 0.08.
_pack_scalar = msgpack.Packer(use_bin_type=True, buf_size=256).pack
_load_literal = _refs.load_literal
try:  # runs of plain calls, compiled (docs/python.md, "How the executor runs tasks")
    from ._speedups import RunBatch as _RunBatch
    from ._speedups import answers_wire as _answers_wire
    from ._speedups import run_plain as _run_plain
    from ._speedups import runs_batch as _runs_batch
except ImportError:
    _run_plain = _runs_batch = _answers_wire = None  # type: ignore[assignment]
    _RunBatch = None  # type: ignore[assignment,misc]


# what RunBatch.run_many reads after each run: whether a task seceded (_worker._seceding)
_worker_flags = vars(_worker)


def _unpack_entry(b: bytes) -> Any:
    """A runs entry as split_runs has it, from its bytes (for RunBatch)."""
    return _unpackb(b, raw=False, strict_map_key=False)


def _drop_head(pending: collections.deque[Any], head: Any) -> None:
    """Take ``head`` off ``pending`` when it is still first (a seceded task's thread and the
    one serving after it may both see it done)."""
    if pending and pending[0] is head:
        pending.popleft()


_NO_KWARGS: dict[str, Any] = {}  # no keyword arguments (never changed: a call's **kwargs is a new dict)


def load_payload(payload: bytes | bytearray | None, values: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Unpickle ``(args, kwargs)`` and put the dependency values in place of the Refs; or,
    for a literal payload (a zero byte, then msgpack ``[args]`` or ``[args, refs]``:
    docs/protocol.md §3.1), take ``args`` with the value of the wire key at each position in
    ``refs``."""
    if not payload:
        return (), _NO_KWARGS
    if payload[0] == 0:
        return _load_literal(payload, values), _NO_KWARGS
    if values:
        u = _RefUnpickler(io.BytesIO(payload))
        u.values = values
        args, kwargs = u.load()
    else:
        args, kwargs = pickle.loads(payload)
    if type(args) is not tuple:
        args = tuple(args)
    if type(kwargs) is not dict:
        kwargs = dict(kwargs)
    return args, kwargs


def qualified_name(typ: type) -> str:
    """``module.qualname`` of an exception type (``builtins.ZeroDivisionError``)."""
    return f"{typ.__module__}.{typ.__qualname__}"


def format_remote_traceback(exc: BaseException, skip: int) -> str:
    """Format the traceback of ``exc`` without the executor's own ``skip`` outermost frames
    (none left when the task's function has no Python frame: a builtin's error)."""
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def error_reply(task_id: Any, exc: BaseException, *, skip: int, prefix: str = "") -> Header:
    """An ``error`` message for ``exc``, with the pickled exception when it pickles."""
    err: Header = {
        "code": "task-error",
        "type": qualified_name(type(exc)),
        "message": prefix + _safe_str(exc),
        "traceback": format_remote_traceback(exc, skip),
    }
    exc_bytes = pickle_exception(exc)
    if exc_bytes is not None:
        err["exc"] = exc_bytes
    return {"op": "error", "id": task_id, "error": err}


def compiled_error(task_id: Any, exc: BaseException, task: Any) -> Header:
    """The error answer of a run made in C that raised ``exc``, then ``task`` leaves: as
    :meth:`Executor.call` answers, before the task leaves (so a message may still ask which task
    it is). A KeyboardInterrupt is raised again, as call raises it."""
    try:
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        return error_reply(task_id, exc, skip=0)
    finally:
        _worker.leave(task)


def pickle_exception(exc: BaseException) -> bytes | None:
    """The exception pickled so that the client can rebuild it, or None."""
    tb, cause, ctx = exc.__traceback__, exc.__cause__, exc.__context__
    try:
        exc.__traceback__ = None
        exc.__cause__ = None
        exc.__context__ = None
        for dumps in (pickle.dumps, _cloudpickle_dumps):
            try:
                data = dumps(exc)
                pickle.loads(data)
                return data
            except Exception:
                continue
        return None
    finally:
        exc.__traceback__, exc.__cause__, exc.__context__ = tb, cause, ctx


def _cloudpickle_dumps(obj: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def shm_supported() -> bool:
    """Whether this process can take shared-memory windows and segments (Linux: SCM_RIGHTS,
    mmap, memfd seals)."""
    if os.environ.get("SHOAL_EXECUTOR_SHM", "1") == "0":
        return False
    return (sys.platform.startswith("linux") and hasattr(socket, "CMSG_SPACE")
            and hasattr(socket.socket, "recvmsg_into") and hasattr(mmap, "MAP_SHARED")
            and hasattr(os, "memfd_create") and _SEALS != 0)


def connect_from_env() -> tuple[_wire.Connection, Windows | None, FdReceiver | None]:
    """The worker connection from ``SHOAL_EXECUTOR_FD`` / ``SHOAL_EXECUTOR_TOKEN``, handshaken,
    the shared-memory windows when this platform supports them, and the receiver of the
    descriptors the worker passes (windows; a seceding task's socket) where it can pass them."""
    try:
        fd = int(os.environ["SHOAL_EXECUTOR_FD"])
    except (KeyError, ValueError) as exc:
        raise SystemExit("shoal.executor: SHOAL_EXECUTOR_FD is not set; this program is started"
                         " by a Shoal worker") from exc
    token = os.environ.get("SHOAL_EXECUTOR_TOKEN", "")
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    _wire.client_handshake(sock, _wire.ROLE_EXECUTOR, token, "worker")
    if not shm_supported():
        if sys.platform.startswith("linux") and hasattr(socket.socket, "recvmsg_into"):
            receiver = FdReceiver(sock)
            return _wire.Connection(sock, address="worker", receiver=receiver), None, receiver
        return _wire.Connection(sock, address="worker"), None, None
    receiver = FdReceiver(sock)
    try:
        idle = int(os.environ.get("SHOAL_EXECUTOR_SHM_IDLE", DEFAULT_SHM_IDLE))
    except ValueError:
        idle = DEFAULT_SHM_IDLE
    conn = _wire.Connection(sock, address="worker", receiver=receiver)
    return conn, Windows(receiver, idle_limit=idle), receiver


# --------------------------------------------------------------------------------------------- cProfile
# A development aid, separate from the statistical profiler above: with SHOAL_EXECUTOR_CPROFILE
# set to a directory, the executor runs its serving thread under cProfile and writes
# ``executor-<pid>.prof`` there (pstats format; ``python -m pstats``), at most once a second,
# between tasks (cProfile profiles the thread that enabled it, so it is written from that thread;
# the idle time waiting for the next task shows as the socket's recv). Off unless set: benchmarks
# turn it on to see where an executor's time goes (docs/performance.md, "TPC-H").


class _CProfile:
    """cProfile over the serving thread, written out between tasks."""

    def __init__(self, executor: Executor, directory: str) -> None:
        import cProfile

        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"executor-{os.getpid()}.prof")
        self.prof = cProfile.Profile()
        self.last = 0
        self.inner = executor.call  # what every run goes through (run, run_entry)
        executor.call = self.call  # type: ignore[method-assign,assignment]
        self.prof.enable()

    def call(self, *args: Any) -> tuple[Header, list[Any]]:
        try:
            return self.inner(*args)
        finally:
            if time_ns() - self.last > 1_000_000_000:
                self.dump()

    def dump(self) -> None:
        self.prof.disable()
        try:
            self.prof.dump_stats(self.path)
        except OSError as exc:
            logger.warning("could not write the executor's profile: %s", exc)
        self.last = time_ns()
        self.prof.enable()


# --------------------------------------------------------------------------------------------- end of cProfile


def _stack_dumps() -> Any:
    """Let the worker read this process's call stacks (Client.call_stack, the dashboard's Task
    view): on SIGUSR2, faulthandler writes every thread's Python stack to
    ``$SHOAL_STACK_DIR/stack-<pid>.txt`` from its C-level handler, at once even while a task is
    inside C code. The file is opened for appending: the worker empties it before each signal.
    Returns the open file (kept for the process's life), or None."""
    d = os.environ.get("SHOAL_STACK_DIR")
    if not d:
        return None
    import faulthandler
    import signal

    try:
        f = open(os.path.join(d, f"stack-{os.getpid()}.txt"), "a")
        faulthandler.register(signal.SIGUSR2, file=f, all_threads=True, chain=False)
    except (OSError, ValueError, RuntimeError):
        return None
    return f


#: While runs go on, the holes below live blocks are given back this often (seconds), or every
#: idle time when that is shorter: a busy executor's freed memory is counted against the
#: worker's memory limit, and the idle time (a minute) is too long for that.
TRIM_HOLES_EVERY = 10.0


def trim_when_idle(ex: Executor, idle: float, keep: int = 0,
                   trim: Callable[[int], Any] | None = None,
                   stop: threading.Event | None = None,
                   holes_every: float = TRIM_HOLES_EVERY) -> threading.Thread | None:
    """Start a daemon thread that gives the memory the C heap keeps for reuse back to the
    system with glibc's ``malloc_trim``: all of it once no run has started or ended for
    ``idle`` seconds (``ex.ran``, in ``time_ns``), once per idle spell; and while runs go on,
    every ``holes_every`` seconds (at most ``idle``), what lies in holes below live blocks,
    keeping ``keep`` bytes at the top. None where there is no glibc. (``trim`` and ``stop``:
    for tests.)

    The worker has glibc keep freed memory, large blocks included, for the executor's next
    allocations (worker/executor.go, heapKeep): fresh pages are zeroed by the kernel, on this
    project's VMs at a fraction of memory speed, and that was most of an array job's time.
    The worker counts that memory as the executor's against its memory limit: an idle
    executor gives it back, and a busy one does not keep more than ``keep`` for long."""
    if trim is None:
        try:
            libc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            return None
        libc_trim.argtypes, libc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        trim = libc_trim
    every = min(idle, holes_every)
    idle_ns, every_ns = int(idle * 1e9), int(every * 1e9)
    halt = stop if stop is not None else threading.Event()

    def watch() -> None:
        trimmed = 0  # ex.ran when all was last given back (0: nothing ran yet)
        busy, holes = False, 0  # runs since then; when they began, or the holes were given back
        while not halt.wait(every / 4):
            ran, now = ex.ran, time_ns()
            if ran == trimmed:
                continue
            if not busy:
                busy, holes = True, now
            if now - ran >= idle_ns:
                trim(0)
                trimmed, busy = ran, False
            elif now - holes >= every_ns:
                trim(keep)
                holes = now

    t = threading.Thread(target=watch, name="shoal-trim", daemon=True)
    t.start()
    return t


def start_trimming(ex: Executor, environ: dict[str, str] | os._Environ[str]) -> threading.Thread | None:
    """trim_when_idle as the worker asked (SHOAL_EXECUTOR_TRIM_IDLE, seconds, and
    SHOAL_EXECUTOR_HEAP_KEEP, bytes). The glibc variables the worker set for this process are
    taken out of the environment with them: glibc read them at start, and tasks' child
    processes (a subprocess, a multiprocessing pool) have no trimmer to give the memory back."""
    idle = environ.pop("SHOAL_EXECUTOR_TRIM_IDLE", "")
    keep = environ.pop("SHOAL_EXECUTOR_HEAP_KEEP", "")
    if keep:
        for name in ("MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_"):
            environ.pop(name, None)
    if not idle:
        return None
    try:
        seconds = float(idle)
        if not 0 < seconds < float("inf"):
            raise ValueError
    except ValueError:
        logger.error("SHOAL_EXECUTOR_TRIM_IDLE=%r is not a number of seconds > 0: the heap is never trimmed", idle)
        return None
    return trim_when_idle(ex, seconds, int(keep) if keep.isdigit() else 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m shoal.executor``."""
    stacks = _stack_dumps()  # noqa: F841 (kept open for the process's life)
    conn, windows, receiver = connect_from_env()
    # tasks must not read the token or inherit the worker socket
    os.environ.pop("SHOAL_EXECUTOR_TOKEN", None)
    segments = windows is not None and os.environ.get("SHOAL_EXECUTOR_SEGMENTS") == "1"
    try:
        ex = Executor(conn, windows, segments, receiver)
        start_trimming(ex, os.environ)
        forget_fd = os.environ.pop("SHOAL_EXECUTOR_FORGET_FD", "")
        if forget_fd.isdigit():
            ex.forget_from(int(forget_fd))
        profile = os.environ.get("SHOAL_EXECUTOR_CPROFILE")
        cprof = _CProfile(ex, profile) if profile else None
        try:
            ex.serve()
        finally:
            if cprof is not None:
                cprof.dump()
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
