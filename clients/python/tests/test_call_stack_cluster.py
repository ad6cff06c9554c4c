"""Client.call_stack: the live call stacks of running tasks (real cluster, real executors)."""

from __future__ import annotations

import time

import shoal


def _distinctive_wait(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _outer_frame(seconds: float) -> float:
    return _distinctive_wait(seconds)


def _wait_running(client: shoal.Client, key: str) -> None:
    deadline = time.monotonic() + 30
    while not any(key in ks for ks in client.processing().values()):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)


def test_call_stack_of_running_python_and_go_tasks() -> None:
    with shoal.Client(n_workers=2, threads_per_worker=1) as client:
        fut = client.submit(_outer_frame, 3.0, pure=False)
        go = client.submit_go("sleep", 3.0, pure=False)
        _wait_running(client, fut.key)
        _wait_running(client, go.key)
        time.sleep(0.3)  # the executor is inside the task, not just handed it

        stacks = client.call_stack(fut)
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

        assert fut.result() == 3.0
        assert client.call_stack(fut) == {}, "a finished task has no stack"
