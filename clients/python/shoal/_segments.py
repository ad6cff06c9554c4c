"""Sealed memfd segments: large frames handed to another process on this machine without
going through a socket (docs/protocol.md §3.4 and §3.5). An executor puts a large result in
one; a client on the worker's machine puts a large scattered value in one.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any, Sequence

SEG_MIN = 1 << 20
"""A result goes back in a segment when its frames of at least SEG_MIN_FRAME bytes total this."""

SEG_MIN_FRAME = 4 << 10
"""Smaller frames (a pickle's header) stay in the message: copying them costs less than placing them."""

SEG_ALIGN = 64
"""Frames start at multiples of this in a segment (numpy and Arrow buffers stay aligned)."""

_SEALS = (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
          if hasattr(fcntl, "F_ADD_SEALS") else 0)
"""The seals of a result segment: its bytes and size never change again (0: no seals here)."""


def write_segment(frames: Sequence[Any]) -> tuple[int, list[list[int]], list[Any]]:
    """Write the large frames into a fresh memfd and seal it (docs/protocol.md §3.5).

    Returns the descriptor (the caller passes it to the worker, then closes it), the
    placements ``[frame, offset, length]`` and the frames to send, with those it holds empty.
    The memfd is written with ``pwrite`` rather than through a mapping, so that nothing here
    maps it when it is sealed against writing (a writable shared mapping would prevent that)
    and this process's memory does not grow by the result's size a second time."""
    at: list[list[int]] = []
    size = 0
    for i, f in enumerate(frames):
        n = len(f) if type(f) is bytes else memoryview(f).nbytes
        if n >= SEG_MIN_FRAME:
            size = -(-size // SEG_ALIGN) * SEG_ALIGN
            at.append([i, size, n])
            size += n
    fd = os.memfd_create("shoal-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        for i, off, n in at:
            view = memoryview(frames[i]).cast("B")
            done = 0
            while done < n:  # pwrite writes at most ~2 GiB at a time
                done += os.pwrite(fd, view[done:], off + done)
            view.release()
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    out = list(frames)
    for i, _, _ in at:
        out[i] = b""
    return fd, at, out


def available() -> bool:
    """Whether this platform makes sealed memfds (Linux)."""
    return hasattr(os, "memfd_create") and _SEALS != 0


_host: list[str] = []


def host_id() -> str:
    """This machine's running kernel and this process's pid namespace, as a worker names them
    (``shm_host``): a worker opens another process's descriptors only when they are equal."""
    if not _host:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
            _host.append(boot + " " + os.readlink("/proc/self/ns/pid"))
        except OSError:
            _host.append("")
    return _host[0]
