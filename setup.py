"""Build hook: compile the shoal Go binary and ship it inside the Python package.

``pip install .`` runs ``go build -o <build>/shoal/bin/shoal ./cmd/shoal`` so that
``shoal.LocalCluster`` works with no extra step. Set ``SHOAL_SKIP_GO_BUILD=1`` to skip it (the
package then uses ``$SHOAL_BIN`` or the repository's ``bin/shoal``). Editable installs
(``pip install -e .``) build nothing: they find ``<repo>/bin/shoal``.

It also compiles the optional C extension ``shoal._speedups`` (``clients/python/shoal/_speedups.c``:
the client's conversion of hand-built dask graphs of plain calls, and the executor's runs of
plain calls), editable installs included (next to the sources). Without a C compiler the package
installs without it, and does both in Python, several times more slowly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.dist import Distribution
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithGo(build_py):
    """build_py that also compiles cmd/shoal into shoal/bin/shoal."""

    def run(self) -> None:
        super().run()
        if os.environ.get("SHOAL_SKIP_GO_BUILD") or getattr(self, "editable_mode", False):
            return
        go = shutil.which("go")
        if go is None:
            raise SystemExit("shoal: building the package needs the Go toolchain (`go` on PATH);"
                             " set SHOAL_SKIP_GO_BUILD=1 to install without the binary")
        out = Path(self.build_lib) / "shoal" / "bin" / "shoal"
        out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CGO_ENABLED=os.environ.get("CGO_ENABLED", "0"))
        self.announce(f"go build -o {out} ./cmd/shoal", level=2)
        subprocess.run([go, "build", "-trimpath", "-o", str(out), "./cmd/shoal"], cwd=ROOT,
                       env=env, check=True)
        out.chmod(0o755)


class BinaryDistribution(Distribution):
    """The wheel carries a native binary: tag it for this platform."""

    def has_ext_modules(self) -> bool:
        return True


SPEEDUPS = Extension("shoal._speedups", ["clients/python/shoal/_speedups.c"], optional=True,
                     extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                         "-Wno-missing-field-initializers"])

setup(cmdclass={"build_py": BuildWithGo}, distclass=BinaryDistribution, ext_modules=[SPEEDUPS])
