"""Value encodings (docs/protocol.md §3.1): how a Python value becomes frames and back.

==========  =====================================================================
encoding    used for
==========  =====================================================================
``msgpack`` None, bool, int (64-bit), float, str — readable by Go tasks
``arrow``   pyarrow.Table / RecordBatch and pandas.DataFrame (pandas metadata kept)
``bytes``   bytes, bytearray
``pickle``  everything else (numpy arrays too): protocol 5, out-of-band buffers as frames
==========  =====================================================================

Decoding gives back a ``pandas.DataFrame`` when an Arrow stream carries pandas metadata, and a
``pyarrow.Table`` otherwise (e.g. a Go task's Arrow result).
"""

from __future__ import annotations

import pickle
import sys
from typing import Any, Optional, Sequence

import cloudpickle
import msgpack

from ._wire import Buffer, packb

MSGPACK = "msgpack"
ARROW = "arrow"
PICKLE = "pickle"
BYTES = "bytes"

# the types encode sends as msgpack when it can (ints of up to 64 bits, strs it can encode)
MSGPACK_SCALARS = frozenset((type(None), bool, int, float, str))
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _is_msgpack_scalar(value: Any) -> bool:
    typ = type(value)
    if typ not in MSGPACK_SCALARS:
        return False
    if typ is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    return True


def dumps_pickle(value: Any) -> list[Buffer]:
    """Pickle protocol 5 with out-of-band buffers: [pickle, buffer, buffer, ...]."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        if b"__main__" in head:
            # classes and functions from the client's __main__ must travel by value
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        buffers = []
        head = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    frames: list[Buffer] = [head]
    for b in buffers:
        try:
            frames.append(b.raw())
        except BufferError:  # not contiguous: copy it
            frames.append(bytes(memoryview(b)))
    return frames


def loads_pickle(frames: Sequence[Buffer]) -> Any:
    """Inverse of :func:`dumps_pickle`."""
    return pickle.loads(frames[0], buffers=list(frames[1:]))


def _arrow_ok(df: Any) -> bool:
    """Whether a pandas DataFrame survives an Arrow round trip exactly."""
    import pandas as pd

    if not df.columns.is_unique or isinstance(df.columns, pd.MultiIndex):
        return False
    if any(dt == object for dt in df.dtypes):  # noqa: E721 (numpy's dtype("O") equals object)
        return False
    for idx in [df.index, *(getattr(df.index, "levels", []) or [])]:
        if idx.dtype == object:
            return False
        if isinstance(df.index, pd.DatetimeIndex) and df.index.freq is not None:
            return False
    return not df.attrs


def write_arrow(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()  # type: ignore[no-any-return]


def arrow_table(value: Any) -> Any:
    """The ``pyarrow.Table`` that :func:`encode` sends for ``value`` with the ``arrow``
    encoding, or None when ``value`` takes another encoding."""
    mod = type(value).__module__
    if mod.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(value, pa.Table):
            return value
        if isinstance(value, pa.RecordBatch):
            return pa.Table.from_batches([value])
    elif mod.startswith("pandas") and "pandas" in sys.modules:
        import pandas as pd

        if isinstance(value, pd.DataFrame) and _arrow_ok(value):
            try:
                import pyarrow as pa

                return pa.Table.from_pandas(value, preserve_index=None)
            except Exception:
                pass
    return None


def arrow_size(table: Any) -> int:
    """The length of ``table``'s Arrow IPC stream, counted without writing it."""
    import pyarrow as pa

    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return int(sink.size())


def write_arrow_fd(table: Any, fd: int) -> int:
    """Write ``table``'s Arrow IPC stream into the file ``fd`` from its start (one copy, from
    Arrow's buffers to the file); returns its length."""
    import pyarrow as pa

    with pa.OSFile(f"/proc/self/fd/{fd}", mode="w") as f:
        with pa.ipc.new_stream(f, table.schema) as writer:
            writer.write_table(table)
        return int(f.tell())


class ArrowStream:
    """A value's Arrow IPC stream, ``nbytes`` long, not written yet (see :func:`encode`)."""

    __slots__ = ("table", "nbytes")

    def __init__(self, table: Any, nbytes: int) -> None:
        self.table = table
        self.nbytes = nbytes


def encode(value: Any, defer_arrow_from: Optional[int] = None) -> tuple[str, list[Any]]:
    """Choose an encoding for ``value`` and return (encoding, frames).

    With ``defer_arrow_from``, an Arrow stream at least that long is not written here: its
    one frame is an :class:`ArrowStream`, for the caller to write where it belongs (the
    executor writes it straight into a shared-memory segment). Only a table whose buffers
    reach half that length is measured first: a stream is its buffers (at most, when sliced)
    plus padding and metadata."""
    if _is_msgpack_scalar(value):
        try:
            return MSGPACK, [packb(value)]
        except Exception:
            pass
    typ = type(value)
    if typ is bytes or typ is bytearray:
        return BYTES, [value]
    table = arrow_table(value)
    if table is not None:
        if defer_arrow_from is not None and table.get_total_buffer_size() >= defer_arrow_from // 2:
            n = arrow_size(table)
            if n >= defer_arrow_from:
                return ARROW, [ArrowStream(table, n)]
        return ARROW, [write_arrow(table)]
    return PICKLE, dumps_pickle(value)


def decode(encoding: str, frames: Sequence[Buffer]) -> Any:
    """Turn (encoding, frames) back into a Python value."""
    if encoding == MSGPACK:
        return msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    if encoding == PICKLE:
        return loads_pickle(frames)
    if encoding == BYTES:
        return bytes(frames[0])
    if encoding == ARROW:
        import pyarrow as pa

        table = pa.ipc.open_stream(pa.py_buffer(frames[0])).read_all()
        meta = table.schema.metadata
        if meta and b"pandas" in meta:
            return table.to_pandas()
        return table
    raise ValueError(f"shoal: unknown value encoding {encoding!r}")


def nbytes(frames: Sequence[Buffer]) -> int:
    """Total size of frames in bytes."""
    return sum(memoryview(f).nbytes for f in frames)
