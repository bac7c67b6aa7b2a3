"""Benchmark ``tlearn serve`` under load: throughput, latency, refusals and memory.

Trains ``logreg`` on ``efficientnet_lite0`` features of ``../shared/datasets/animals``
(the store of ``bench/train.py`` when present), then for each server variant
(runtime TensorFlow or OpenVINO, see ``--runtimes``; batching on, batching off) starts
``tlearn serve --runtime R`` on 127.0.0.1 in its own process
and sends bounded load from 1, 4, 16 and 64 concurrent clients, with single-image
and 8-image requests (real JPEGs from the dataset). Each level sends a fixed number
of requests and stops at a time limit: the load generator ends by itself.

Reports requests/s, images/s, p50/p99 latency of answered requests, how many were
refused with 503 (the bounded queue), and the server's resident memory before and
after the whole load (growth means a leak). Prints a table and writes
``bench/results/serve.json`` with the CPU model and its instruction-set flags.
Run: ``.venv/bin/python bench/serve.py [--requests 96] [--runtimes tensorflow,openvino]``.
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
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "datasets" / "animals"
CLIENTS = (1, 4, 16, 64)
IMAGES_PER_REQUEST = (1, 8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, data in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                 f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def one_request(port: int, payload: tuple[bytes, str]) -> tuple[int, float]:
    body, ctype = payload
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        response.read()
        status = response.status
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def load(port: int, payloads, requests: int, clients: int, time_limit: float) -> dict:
    """``clients`` threads share ``requests`` requests; none starts after ``time_limit``."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + time_limit

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            outcome = one_request(port, payloads[i % len(payloads)])
            with lock:
                results.append(outcome)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sorted(1000 * s for status, s in results if status == 200)
    refused = sum(1 for status, _ in results if status == 503)
    other = len(results) - len(ok) - refused
    return {"clients": clients, "requests": len(results), "answered": len(ok),
            "refused_503": refused, "other_errors": other, "seconds": wall,
            "requests_per_second": len(ok) / wall,
            "p50_ms": ok[len(ok) // 2] if ok else None,
            "p99_ms": ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_healthy(port: int, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not start")


def run_variant(model: Path, runtime: str, batching: bool, images: list[Path], args) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", str(model), "--port", str(port),
         "--runtime", runtime, "--batching" if batching else "--no-batching"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)
        files = [(p.name, p.read_bytes()) for p in images]
        payloads = {k: [multipart([files[(i + j) % len(files)] for j in range(k)])
                        for i in range(len(files))] for k in IMAGES_PER_REQUEST}
        for payload in payloads[1][:3] + payloads[8][:2]:
            one_request(port, payload)  # warm-up
        time.sleep(1)
        before = rss_mb(server.pid)
        rows = []
        for k in IMAGES_PER_REQUEST:
            for clients in CLIENTS:
                row = load(port, payloads[k], max(args.requests, clients), clients,
                           args.time_limit)
                row |= {"images_per_request": k, "batching": batching, "runtime": runtime,
                        "images_per_second": row["requests_per_second"] * k}
                rows.append(row)
                print(f"runtime={runtime} batching={batching} images={k} clients={clients}: "
                      f"{row['requests_per_second']:.1f} req/s, 503: {row['refused_503']}",
                      flush=True)
        time.sleep(2)
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"runtime": runtime, "batching": batching, "rss_mb_before": before,
            "rss_mb_after": after, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96,
                        help="requests per level (at least one per client)")
    parser.add_argument("--time-limit", type=float, default=60.0,
                        help="seconds after which a level starts no new request")
    parser.add_argument("--runtimes", default="tensorflow,openvino",
                        help="comma-separated runtimes to serve with (those installed run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    from features.runtimes import RUNTIMES, get_runtime

    runtimes = [name for name in args.runtimes.split(",") if name]
    for name in runtimes:
        get_runtime(name)  # unknown names fail here, not in a server process
    runtimes = [name for name in runtimes if RUNTIMES[name].is_available()]
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/datasets/animals")

    from machine import cpu_info, describe
    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLEARN_ARTIFACTS"] = tmp
        from pipeline.workflows import extract_dataset, train_store

        store = REPO / "artifacts" / "bench" / "animals-lite0.h5"
        if not store.exists():
            store = extract_dataset(DATA, backbone="efficientnet_lite0").result.path
        model = train_store(store, classifier="logreg")[0].model_path
        images = sorted((DATA / "cats").glob("*.jpg"))[:24]
        variants = [run_variant(model, runtime, batching, images, args)
                    for runtime in runtimes for batching in (True, False)]

    machine = cpu_info()
    table = Table(title="tlearn serve: efficientnet_lite0 + logreg, POST /predict on "
                        f"127.0.0.1 ({describe(machine)})")
    for col in ("runtime", "batching", "images/req", "clients", "answered", "503", "req/s",
                "img/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for v in variants:
        for r in v["rows"]:
            table.add_row(v["runtime"], "on" if v["batching"] else "off",
                          str(r["images_per_request"]),
                          str(r["clients"]), str(r["answered"]), str(r["refused_503"]),
                          f"{r['requests_per_second']:.1f}", f"{r['images_per_second']:.1f}",
                          f"{r['p50_ms']:.0f}" if r["p50_ms"] else "-",
                          f"{r['p99_ms']:.0f}" if r["p99_ms"] else "-")
    Console().print(table)
    for v in variants:
        print(f"{v['runtime']}, batching {'on' if v['batching'] else 'off'}: server memory "
              f"{v['rss_mb_before']:.0f} MB before, {v['rss_mb_after']:.0f} MB after the load")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "variants": variants}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
