"""One version source: the repository's VERSION file, read by setuptools (the distribution's
metadata), by shoal.__version__ and, embedded, by the Go binary."""

from __future__ import annotations

import subprocess
from pathlib import Path

import shoal
from shoal.cluster import find_binary

from conftest import needs_binary

VERSION = (Path(__file__).resolve().parents[3] / "VERSION").read_text().strip()


def test_python_version_is_the_version_file() -> None:
    assert VERSION and shoal.__version__ == VERSION


@needs_binary
def test_binary_version_is_the_version_file() -> None:
    out = subprocess.run([find_binary(), "version"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["shoal", VERSION]


def test_client_sees_the_scheduler_version(client: shoal.Client) -> None:
    assert client.server_version == VERSION
