"""A real `shopee-fastai serve` process on 127.0.0.1 (a free port), over the tiny model the other tests train."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_S = 180  # a cold start exports the ONNX graph and, with a catalogue, embeds it


@dataclass
class Server:
    url: str
    log: Path
    proc: subprocess.Popen

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(model: Path | None, log: Path, catalog: Path | None = None, audit: Path | None = None):
    """`serve` in a child process until the block ends; fails with the server's output if it never answers.
    Its temporary files go to tmp/ beside the log, never the machine's /tmp."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "shopee_fastai", "serve", "--port", str(port)]
    cmd += ["--model", str(model)] if model else []
    cmd += ["--catalog", str(catalog)] if catalog else []
    cmd += ["--audit", str(audit)] if audit else []
    tmp = log.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)})
    server = Server(f"http://127.0.0.1:{port}", log, proc)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer within {STARTUP_S} s:\n{server.output()}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def audited_folder(tmp_path_factory) -> Path:
    """An audit of a small catalogue with planted mislabels (tests/audit)."""
    from shopee_fastai.audit import AuditConfig, run_audit

    from ..audit.test_audit import make_catalogue

    data = make_catalogue(tmp_path_factory.mktemp("review-data"))
    out = tmp_path_factory.mktemp("review") / "audit"
    run_audit(AuditConfig(data=data, out=out), progress=False)
    return out


@pytest.fixture(scope="session")
def reviewing(audited_folder, tmp_path_factory):
    """`serve --audit` alone: the Review tab, no model."""
    with running(None, tmp_path_factory.mktemp("serve-review") / "serve.log", audit=audited_folder) as server:
        yield server


@pytest.fixture(scope="session")
def served(trained_cnn, synthetic, tmp_path_factory):
    """The tiny model's weights-only export (no pickle) with the synthetic data as its catalogue."""
    with running(trained_cnn.files.safetensors, tmp_path_factory.mktemp("serve") / "serve.log", synthetic) as server:
        yield server
