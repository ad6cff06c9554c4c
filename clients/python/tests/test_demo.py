"""`make demo` runs examples/demo.py: it must keep working, print its results and leave nothing
running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import needs_binary

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo.py"


@needs_binary
def test_demo_runs() -> None:
    out = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for expected in ("Dashboard:    http://127.0.0.1:", "sum of squares:  332833500", "864,000 rows",
                     "a pyarrow.Table of 1,000,000 rows", "groupby_sum (Go) gives 100 keys",
                     "Cluster stopped"):
        assert expected in out.stdout, out.stdout
    assert out.stderr == ""  # no logs, no warnings on the terminal
