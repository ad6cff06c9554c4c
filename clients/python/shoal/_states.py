"""The one owner of a client's key states.

Every :class:`~shoal.futures.Future` of a key shares one :class:`~shoal.futures.KeyState`.
:class:`KeyStates` creates them, counts the Futures holding each key, applies the scheduler's
``key_state`` messages to them, and fails them when the connection is gone for good. Its lock
guards the map and the counts; a KeyState's own fields change only through its methods, under
the KeyState's lock (the reader thread finishing a key and a fetching thread moving it to
another worker never race).
"""

from __future__ import annotations

import collections
import threading
from typing import Iterable, Optional

from ._conn import KeyStateMsg
from .exceptions import CancelledError, FutureLostError, ShoalError, error_from_wire
from .futures import CANCELLED, ERROR, FINISHED, LOST, PENDING, KeyState


class KeyStates:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.states: dict[str, KeyState] = {}
        self._refcount: dict[str, int] = {}
        self._release_queue: collections.deque[str] = collections.deque()
        self.error: Optional[BaseException] = None  # set when the connection is gone for good

    def acquire(self, key: str) -> KeyState:
        """The state of ``key`` for one more Future (created pending when new)."""
        with self.lock:
            st = self.states.get(key)
            if st is None:
                st = self.states[key] = KeyState(key)
                if self.error is not None:
                    st.fail(ERROR, self.error)
            self._refcount[key] = self._refcount.get(key, 0) + 1
            return st

    def get(self, key: str) -> Optional[KeyState]:
        with self.lock:
            return self.states.get(key)

    def live(self, key: str) -> bool:
        """Whether a Future of ``key`` is held, pending or finished."""
        with self.lock:
            st = self.states.get(key)
            return st is not None and st.status in (PENDING, FINISHED)

    def renew(self, keys: Iterable[str]) -> None:
        """Before submitting ``keys`` again: a failed key gets a fresh state (its old Futures
        keep their error), a pending or finished one is kept."""
        with self.lock:
            for k in keys:
                st = self.states.get(k)
                if st is not None and st.done() and st.status != FINISHED:
                    self.states[k] = KeyState(k)

    def keys(self) -> list[str]:
        with self.lock:
            return list(self.states)

    def release_later(self, key: str) -> None:
        """A Future of ``key`` was dropped (called from ``Future.__del__``: lock-free)."""
        self._release_queue.append(key)

    def take_releases(self) -> list[str]:
        """Keys no Future holds any more (forgotten here; the caller tells the scheduler)."""
        if not self._release_queue:
            return []
        gone: list[str] = []
        with self.lock:
            while self._release_queue:
                key = self._release_queue.popleft()
                n = self._refcount.get(key, 0) - 1
                if n > 0:
                    self._refcount[key] = n
                    continue
                self._refcount.pop(key, None)
                self.states.pop(key, None)
                gone.append(key)
        return gone

    def apply(self, msg: KeyStateMsg) -> None:
        """A ``key_state`` from the scheduler."""
        with self.lock:
            st = self.states.get(msg.key)
        if st is None or st.status == CANCELLED:
            return
        state = msg.state
        if state == "memory":
            st.finish(msg.worker, msg.encoding, msg.nbytes)
        elif state == "erred":
            err = msg.error or {}
            st.fail(ERROR, error_from_wire(err), str(err.get("traceback") or "") or None)
        elif state == "cancelled":
            st.fail(CANCELLED, error_from_wire(msg.error or {"code": "cancelled",
                                                             "message": f"{msg.key} was cancelled"}))
        elif state == "lost":
            st.fail(LOST, error_from_wire(msg.error or {"code": "lost",
                                                        "message": f"the data of {msg.key} was lost"}))
        elif state in ("waiting", "processing", "released", "queued", "no-worker"):
            if st.status == FINISHED:
                st.reset()

    def fail(self, keys: Iterable[str], exc: BaseException) -> None:
        with self.lock:
            states = [self.states[k] for k in keys if k in self.states]
        for st in states:
            st.fail(ERROR, exc)

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every key not done yet (cancelled when ``exc`` is a CancelledError)."""
        status = CANCELLED if isinstance(exc, CancelledError) else ERROR
        with self.lock:
            states = [st for st in self.states.values() if not st.done()]
        for st in states:
            st.fail(status, exc)

    def close(self, exc: BaseException) -> None:
        """The connection is gone for good: fail what is pending, and every later key."""
        with self.lock:
            self.error = exc
        self.fail_pending(exc)


def raise_state(st: KeyState) -> None:
    """Raise why ``st`` did not finish (nothing when it did)."""
    if st.status == FINISHED:
        return
    if st.exception is not None:
        st.raise_exception()  # with the worker's frames as its traceback
    if st.status == CANCELLED:
        raise CancelledError(f"{st.key} was cancelled")
    if st.status == LOST:
        raise FutureLostError(f"the data of {st.key} was lost")
    raise ShoalError(f"{st.key} failed")


def relocate_delay(polls: int) -> float:
    """Seconds to wait before the next ``who_has`` of a relocation (``Client._relocate`` and
    its asynchronous twin) that has already asked ``polls`` times: 50 ms, doubling, at most
    2 s. A key whose state is still finished has its event set, so waiting on the event alone
    asked as fast as the scheduler answered."""
    return min(0.05 * (1 << min(polls, 6)), 2.0)
