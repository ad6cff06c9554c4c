"""A real `shoal local` cluster serving TLS (certificates made with the openssl command)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal import Client
from shoal.cluster import find_binary
from shoal.exceptions import ShoalError


def inc(x: int) -> int:
    return x + 1


def _pki(d: Path) -> tuple[Path, Path, Path]:
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem"))
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=shoal test CA", "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "1", "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_cluster(tmp_path: Path) -> None:
    try:
        binary = find_binary()
    except ShoalError:
        pytest.skip("no shoal binary")
    ca, cert, key = _pki(tmp_path)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [binary, "local", "--workers", "2", "--nthreads", "1", "--port", "0", "--gossip-port", "0",
         "--dashboard-port", "-1", "--ready-file", str(ready), "--tls-cert", str(cert),
         "--tls-key", str(key), "--tls-ca", str(ca), "--python", sys.executable,
         "--log-level", "warn"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "shoal local exited"
            assert time.monotonic() < deadline, "cluster not ready"
            time.sleep(0.05)
        addr = json.loads(ready.read_text())["scheduler"]
        ctx = ssl.create_default_context(cafile=str(ca))
        with Client(addr, tls=ctx, timeout=20) as client:
            assert client.submit(inc, 41).result(timeout=60) == 42
            assert client.gather(client.map(inc, range(20))) == list(range(1, 21))
        with pytest.raises((ShoalError, OSError)):
            Client(addr, timeout=5)  # plain TCP to a TLS port is refused
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
