"""The served JSON API under load: N concurrent clients send real photos, one per request, to `/api/predict`
on 127.0.0.1, against `predict` over the same photos in one process (ONNX Runtime, batches of 32).

Per client count: photos/s, p50/p95/p99 latency, errors (must be 0) and the ratio to `predict`'s photos/s,
measured before and after the load phases and averaged (the machine may be busy with other work). Then the
server's resident memory after the first 200 requests and after 2,000. Every loop is bounded by a request
count and a time limit; the server only ever listens on 127.0.0.1.

    python bench/serve_load.py --model models/x.onnx --photos ../shared/data/grocery-store/train_images
    python bench/serve_load.py   # trains the quick start's model on the bundled sample first
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.images import collect_images
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.inference.load import load_predictor

from predict_speed import GROCERY, sample_model  # bench/predict_speed.py, beside this script
from shopee_fastai.machine import summary

STARTUP_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shopee_fastai", "serve", "--model", str(model), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    sys.exit(f"serve did not start:\n{log.read_text()[-2000:]}")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, photos: list[tuple[str, bytes]], clients: int, requests: int, seconds: float) -> dict:
    """`clients` threads, each posting one photo per request, until `requests` are sent or `seconds` pass."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal sent
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    if sent >= requests:
                        return
                    i = sent
                    sent += 1
                name, data = photos[i % len(photos)]
                start = time.perf_counter()
                try:
                    r = http.post(f"{url}/api/predict", files=[("file", (name, data, "image/jpeg"))])
                    ok = r.status_code == 200 and len(r.json()) == 1
                    why = "" if ok else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                with lock:
                    (latencies.append(time.perf_counter() - start) if ok else errors.append(why))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies) + len(errors), "errors": len(errors), "first_error": errors[:1],
            "rate": len(latencies) / wall, "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95),
            "p99": np.percentile(ms, 99)}


def predict_rate(model: Path, files: list[Path]) -> float:
    """Photos/s of `predict` over `files` in one process (the fast path, batches of 32), after a warm-up."""
    p = load_predictor(model)
    p.outputs(files[:32], progress=False)
    start = time.perf_counter()
    p.outputs(files, progress=False)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a .pkl, .safetensors or .onnx (default: train Lite0 on the bundled sample)")
    ap.add_argument("--photos", type=Path, default=GROCERY if GROCERY.is_dir() else SAMPLE_DIR / "train_images")
    ap.add_argument("--n", type=int, default=300, help="distinct photos sent (and predicted by `predict`)")
    ap.add_argument("--clients", default="1,4,16", help="client counts, one load phase each")
    ap.add_argument("--requests", type=int, default=600, help="requests per load phase at most")
    ap.add_argument("--seconds", type=float, default=60, help="time per load phase at most")
    ap.add_argument("--rss-at", default="200,2000", help="request counts after which the server's memory is read")
    args = ap.parse_args()
    print(summary())

    files = collect_images([args.photos])[: args.n]
    photos = [(f.name, f.read_bytes()) for f in files]
    early, late = (int(x) for x in args.rss_at.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or sample_model(Path(tmp), OFFLINE_ARCH)
        before = predict_rate(model, files)
        proc, url = start_server(model, Path(tmp) / "serve.log")
        try:
            counts = [int(c) for c in args.clients.split(",")]
            # warm-up at the highest concurrency: batches of every size have run before the first memory reading
            extra = [load(url, photos, max(counts), early, 600)]
            rss = {extra[0]["requests"]: rss_mb(proc.pid)}
            phases = []
            for c in counts:
                phases.append(load(url, photos, c, args.requests, args.seconds))
                phases[-1]["rss"] = rss_mb(proc.pid)
            done = sum(p["requests"] for p in extra + phases)
            if done < late:
                extra.append(load(url, photos, max(counts), late - done, 600))
            rss[sum(p["requests"] for p in extra + phases)] = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        after = predict_rate(model, files)

    base = (before + after) / 2
    print(f"{len(files)} photos from {args.photos}, model {model}, {os.cpu_count()} CPU cores; server and clients on "
          f"this machine\n`predict` in one process: {before:.1f} photos/s before the load phases, {after:.1f} after "
          f"(mean {base:.1f})\n")
    print("| clients | requests | photos/s | × predict | p50 ms | p95 ms | p99 ms | errors | server RSS after (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in phases:
        print(f"| {p['clients']} | {p['requests']} | {p['rate']:.1f} | {p['rate'] / base:.2f} | {p['p50']:.0f} | "
              f"{p['p95']:.0f} | {p['p99']:.0f} | {p['errors']} | {p['rss']:.0f} |")
    (n1, m1), (n2, m2) = sorted(rss.items())
    print(f"\nserver memory (RSS): {m1:.0f} MB after {n1} requests, {m2:.0f} MB after {n2} ({m2 - m1:+.0f} MB)")
    errors = [e for p in extra + phases for e in p["first_error"]]
    if errors:
        sys.exit(f"errors: {sum(p['errors'] for p in extra + phases)} (warm-up and top-up included), e.g. {errors[0]}")


if __name__ == "__main__":
    main()
