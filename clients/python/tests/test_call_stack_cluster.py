"""Client.call_stack: the live call stacks of running tasks (real cluster, real executors)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import shoal


def _distinctive_wait(release: str) -> float:
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return 3.0


def _outer_frame(release: str) -> float:
    return _distinctive_wait(release)


def _python_stack(client: shoal.Client, fut: shoal.Future, frame: str) -> dict[str, dict[str, list[str]]]:
    """The task's stack, once its executor runs it (its text names ``frame``): the scheduler
    counts a task as processing when its worker has it, which may be before an executor has
    started and taken it (a worker's first executor starts with its first Python task), and
    an executor asked meanwhile shows its threads still reading the run."""
    deadline = time.monotonic() + 30
    while True:
        stacks = client.call_stack(fut)
        if any(frame in line for per_worker in stacks.values() for lines in per_worker.values() for line in lines):
            return stacks
        assert time.monotonic() < deadline, f"the task never ran in an executor: {stacks}"
        time.sleep(0.05)


def test_call_stack_of_running_python_and_go_tasks(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with shoal.Client(n_workers=2, threads_per_worker=1) as client:
        fut = client.submit(_outer_frame, str(release), pure=False)
        # long enough to outlast an executor's start (closing the cluster stops it)
        go = client.submit_go("sleep", 5.0, pure=False)
        try:
            stacks = _python_stack(client, fut, "_distinctive_wait")
            assert len(stacks) == 1, stacks
            (lines,) = next(iter(stacks.values())).values()
            text = "\n".join(lines)
            # the task's own frames, innermost first, while it sleeps inside C code
            assert "_distinctive_wait" in text and "_outer_frame" in text, text
            assert text.index("_distinctive_wait") < text.index("_outer_frame"), text

            everything = client.call_stack()
            keys = {k for per_worker in everything.values() for k in per_worker}
            assert {fut.key, go.key} <= keys, everything
            go_text = "\n".join(next(d[go.key] for d in everything.values() if go.key in d))
            assert "runGo" in go_text, go_text
        finally:
            release.touch()

        assert fut.result() == 3.0
        assert client.call_stack(fut) == {}, "a finished task has no stack"
