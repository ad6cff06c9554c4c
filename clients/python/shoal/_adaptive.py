"""Adaptive scaling of a LocalCluster (dask's ``cluster.adapt``).

Every ``interval`` the scheduler is asked how much work is pending (tasks not yet finished and
their expected run time, from each task group's mean duration). The target is the number of
workers that would finish that work in ``target_duration`` — at least one while any task is
pending, never more workers than tasks, within [minimum, maximum]. Scaling up happens at once;
scaling down only after ``wait_count`` consecutive intervals recommend it (dask's hysteresis),
and retires workers gracefully (their results are copied to the others first).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from .cluster import LocalCluster

logger = logging.getLogger("shoal")

_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_seconds(value: Union[str, float, int], name: str) -> float:
    """``5``, ``"5s"``, ``"500ms"``, ``"2m"`` → seconds; anything else is a ValueError naming it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|min|m|h)?\s*", str(value))
        if not m:
            raise ValueError(f"{name}={value!r}: want seconds, or a string like '5s', '500ms', '2m'")
        secs = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not secs > 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return secs


class Adaptive:
    """The adaptive policy of one cluster, run on a background thread until ``stop()``."""

    def __init__(self, cluster: "LocalCluster", minimum: int = 0, maximum: float = math.inf,
                 target_duration: Union[str, float] = "5s", wait_count: int = 3,
                 interval: Union[str, float] = "1s") -> None:
        if minimum < 0 or maximum < minimum:
            raise ValueError(f"adapt: need 0 <= minimum <= maximum, got minimum={minimum}, maximum={maximum}")
        if wait_count < 1:
            raise ValueError(f"adapt: wait_count={wait_count} must be at least 1")
        self.cluster = cluster
        self.minimum, self.maximum = int(minimum), maximum
        self.target_duration = parse_seconds(target_duration, "target_duration")
        self.interval = parse_seconds(interval, "interval")
        self.wait_count = int(wait_count)
        self.log: list[tuple[int, int]] = []  # (from, to) of every scaling decision taken
        self._down = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shoal-adaptive", daemon=True)
        self._thread.start()

    def recommendation(self, pending: int, work: float, current: int) -> Optional[int]:
        """The worker count to scale to now, or None to stay (applies the hysteresis)."""
        threads = max(self.cluster.threads_per_worker, 1)
        target = math.ceil(work / self.target_duration / threads)
        if pending > 0:
            target = max(target, 1)
        target = min(target, math.ceil(pending / threads))
        target = int(min(max(target, self.minimum), self.maximum))
        if target > current:
            self._down = 0
            return target
        if target < current:
            self._down += 1
            if self._down >= self.wait_count:
                self._down = 0
                return target
            return None
        self._down = 0
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                info: dict[str, Any] = self.cluster._control()._request({"op": "info"})
                current = len(info.get("workers") or [])
                to = self.recommendation(int(info.get("n") or 0), float(info.get("work") or 0.0), current)
                if to is not None and not self._stop.is_set():
                    logger.info("shoal: adaptive scaling from %d to %d workers", current, to)
                    self.log.append((current, to))
                    self.cluster._scale(to)
            except Exception as exc:  # the cluster is closing, or one decision failed: try again
                if self._stop.is_set():
                    return
                logger.warning("shoal: adaptive scaling failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
