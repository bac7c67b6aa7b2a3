"""Benchmark ``tlearn serve``: requests per second and p50/p99 latency of single-image requests.

Trains ``logreg`` on ``efficientnet_lite0`` features of ``../shared/datasets/animals``
(the store of ``bench/train.py`` when present), starts ``tlearn serve`` on 127.0.0.1
in a separate process, and sends a bounded number of single-image POST /predict
requests from a small thread pool (1 and 4 concurrent clients), each request one
real JPEG from the dataset. Prints a table and writes ``bench/results/serve.json``.
Run: ``.venv/bin/python bench/serve.py [--requests 200]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "datasets" / "animals"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def one_request(port: int, payload: tuple[bytes, str]) -> float:
    body, ctype = payload
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    finally:
        conn.close()
    return time.perf_counter() - t0


def load(port: int, payloads, requests: int, concurrency: int, time_limit: float) -> dict:
    latencies = []
    deadline = time.perf_counter() + time_limit
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = []
        for i in range(requests):
            if time.perf_counter() > deadline:
                break
            futures.append(pool.submit(one_request, port, payloads[i % len(payloads)]))
        latencies = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)
    return {"concurrency": concurrency, "requests": len(ms), "seconds": wall,
            "requests_per_second": len(ms) / wall, "p50_ms": ms[len(ms) // 2],
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/datasets/animals")

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLEARN_ARTIFACTS"] = tmp
        from pipeline.workflows import extract_dataset, train_store

        store = REPO / "artifacts" / "bench" / "animals-lite0.h5"
        if not store.exists():
            store = extract_dataset(DATA, backbone="efficientnet_lite0").result.path
        model = train_store(store, classifier="logreg")[0].model_path
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", str(model), "--port", str(port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError("server did not start")
            images = sorted((DATA / "cats").glob("*.jpg"))[:20]
            payloads = [multipart(p.name, p.read_bytes()) for p in images]
            for payload in payloads[:5]:
                one_request(port, payload)  # warm-up: compile the graph for small batches
            rows = [load(port, payloads, args.requests, c, args.time_limit) for c in (1, 4)]
        finally:
            server.terminate()
            server.wait(timeout=30)

    table = Table(title="tlearn serve: efficientnet_lite0 + logreg, single-image POST "
                        "/predict on 127.0.0.1, 2 CPUs")
    for col in ("clients", "requests", "req/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["concurrency"]), str(r["requests"]),
                      f"{r['requests_per_second']:.1f}", f"{r['p50_ms']:.0f}",
                      f"{r['p99_ms']:.0f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
