"""The wire error codes agree in the Go code, the protocol document and the Python client, and
every exception class is exported from the package."""

from __future__ import annotations

import re
from pathlib import Path

import shoal
from shoal import exceptions

ROOT = Path(__file__).resolve().parents[3]


def go_codes() -> set[str]:
    text = (ROOT / "internal" / "wire" / "codes.go").read_text()
    block = text[text.index("const ("):]
    block = block[: block.index(")")]
    return set(re.findall(r'^\s*Code\w+\s*=\s*"([^"]+)"', block, re.M))


def documented_codes() -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("## 5. Error codes"):]
    rows = [line for line in section.splitlines()[1:] if line.startswith("| `")]
    return {code for row in rows for code in re.findall(r"`([a-z-]+)`", row.split("|")[1])}


def test_go_docs_and_python_agree() -> None:
    go = go_codes()
    assert "task-error" in go and "duplicate-worker" in go
    assert documented_codes() == go, "internal/wire/codes.go and docs/protocol.md §5 disagree"
    assert set(exceptions._BY_CODE) == go, \
        "internal/wire/codes.go and shoal/exceptions.py's _BY_CODE disagree"


def test_every_exception_is_exported() -> None:
    classes = {name for name, value in vars(exceptions).items()
               if isinstance(value, type) and issubclass(value, BaseException)
               and value.__module__ == exceptions.__name__}
    assert classes <= set(exceptions.__all__)
    assert classes <= set(shoal.__all__)
    assert all(getattr(shoal, name) is getattr(exceptions, name) for name in classes)
