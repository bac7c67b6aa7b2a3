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

``--attacks`` instead measures the server under hostile load (loopback only, every
loop bounded), with a logreg on efficientnet_lite0 features of 12 animals per class:

* memory: the server's resident memory before, at the peak of, and after 100 uploads
  that send all but the last KB of a 20 MB body and hold the connection;
* slow sockets: 400 connections that send half a request line and hold it; how many
  the server closed, and when, against its body timeout;
* CPU: four concurrent requests of 16 PNGs of 7000x7000 pixels each, and the latency
  of normal one-image requests sent while they run; then the same with 4898x4898 PNGs,
  the largest that fit the default per-request pixel budget (one decoded per request).

``--baseline DIR`` runs the same attacks against the code in DIR too (e.g. an earlier
commit unpacked with ``git archive``), so both lines come from one machine and run.
Writes ``bench/results/serve_attacks.json``.

``--token`` instead measures what the bearer-token check costs: two servers of the same
model (a logreg on efficientnet_lite0 features of 12 animals per class, the fastest
installed runtime: OpenVINO where installed) run side by side on loopback, one without
a token and one with ``TLEARN_TOKEN`` (its clients send it). Rounds alternate between
them, so load from other processes falls on both alike: one-image ``POST /predict`` from
1 and 16 clients, and ``GET /model`` (no model work: the check's largest share) from 16.
It also times, in process, the check alone and a whole ``GET /model`` without and with it.
Writes ``bench/results/serve_token.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
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


def one_request(port: int, payload: tuple[bytes, str] | None,
                headers: dict | None = None) -> tuple[int, float]:
    """``POST /predict`` of ``payload``, or ``GET /model`` when it is None: (status, seconds)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        if payload is None:
            conn.request("GET", "/model", headers=headers or {})
        else:
            body, ctype = payload
            conn.request("POST", "/predict", body=body,
                         headers={"Content-Type": ctype, **(headers or {})})
        response = conn.getresponse()
        response.read()
        status = response.status
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def load(port: int, payloads, requests: int, clients: int, time_limit: float,
         headers: dict | None = None) -> dict:
    """``clients`` threads share ``requests`` requests; none starts after ``time_limit``."""
    return {"clients": clients, **summary(*run_load(port, payloads, requests, clients,
                                                    time_limit, headers))}


def run_load(port: int, payloads, requests: int, clients: int, time_limit: float,
             headers: dict | None = None) -> tuple[list[tuple[int, float]], float]:
    """The ``(status, seconds)`` of each request of :func:`load`, and the wall time."""
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
            outcome = one_request(port, payloads[i % len(payloads)], headers)
            with lock:
                results.append(outcome)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def summary(results: list[tuple[int, float]], wall: float) -> dict:
    """Requests/s and latency percentiles of the answered ``(status, seconds)`` results."""
    ok = sorted(1000 * s for status, s in results if status == 200)
    refused = sum(1 for status, _ in results if status == 503)
    other = len(results) - len(ok) - refused
    return {"requests": len(results), "answered": len(ok),
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


def start_server(model: Path, code: Path, extra: list[str] | None = None,
                 env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """``tlearn serve`` of ``model`` with the code in ``code``, once it answers /health."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", str(model), "--port", str(port),
         *(extra or [])], cwd=code,
        env={**os.environ, "PYTHONPATH": str(code), **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)
    except BaseException:
        server.kill()
        raise
    return server, port


def held_uploads(port: int, pid: int, count: int, hold: float) -> dict:
    """``count`` uploads each send all but the last KB of a 20 MB body, then hold.

    Each connection is held until the server closes it or ``hold`` seconds pass.
    Reports the server's memory before, at the peak, and after all are closed.
    """
    size = 20 * 2**20 - 4096  # under the default limit, so none is refused up front
    boundary = "B" * 16
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {size}\r\n\r\n--{boundary}\r\n"
            "Content-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n")
    body = memoryview(head.encode() + b"\0" * (size - 1024 - len(head)))  # one shared copy
    dropped_after: list[float] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def hold_one() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(hold)
        try:
            sock.sendall(body)
            while sock.recv(65536):
                pass
            with lock:
                dropped_after.append(time.perf_counter() - t0)
        except TimeoutError:
            pass  # still held by the server at the end of the hold
        except OSError:  # reset by the server while sending
            with lock:
                dropped_after.append(time.perf_counter() - t0)
        finally:
            sock.close()

    before = rss_mb(pid)
    threads = [threading.Thread(target=hold_one) for _ in range(count)]
    for t in threads:
        t.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid))
        time.sleep(0.25)
    time.sleep(2)
    return {"connections": count, "body_mb": size / 2**20, "hold_limit_s": hold,
            "rss_mb_before": before, "rss_mb_peak": peak, "rss_mb_after": rss_mb(pid),
            "dropped_by_server": len(dropped_after),
            "last_dropped_after_s": max(dropped_after, default=None)}


def slow_sockets(port: int, count: int, hold: float) -> dict:
    """``count`` connections send half a request line and wait for the server to close them."""
    import selectors

    selector = selectors.DefaultSelector()
    t0 = time.perf_counter()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /predict HTTP/1.1\r\nHo")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed_after = []
    deadline = t0 + hold
    while selector.get_map() and time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=0.5):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:
                closed_after.append(time.perf_counter() - t0)
                selector.unregister(key.fileobj)
                key.fileobj.close()
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
    return {"connections": count, "hold_limit_s": hold, "dropped_by_server": len(closed_after),
            "last_dropped_after_s": max(closed_after, default=None)}


def big_png_flood(port: int, normal: tuple[bytes, str], requests: int, images: int,
                  side: int, probes: int) -> dict:
    """``requests`` concurrent requests of ``images`` PNGs of side x side pixels, and
    ``probes`` normal requests sent one after another while they run."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format="PNG")
    flood = multipart([(f"big{i}.png", buf.getvalue()) for i in range(images)])
    attacks: list[tuple[int, float]] = []

    def answered(payload) -> tuple[int, float]:
        t0 = time.perf_counter()
        try:
            return one_request(port, payload)
        except OSError:  # no answer within one_request's timeout: status 0
            return 0, time.perf_counter() - t0

    threads = [threading.Thread(target=lambda: attacks.append(answered(flood)))
               for _ in range(requests)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the flood is being read and decoded
    latencies = []
    for _ in range(probes):
        status, seconds = answered(normal)
        latencies.append({"status": status, "seconds": seconds})
    for t in threads:
        t.join()
    return {"attack_requests": requests, "images_per_request": images, "side": side,
            "upload_mb": requests * len(flood[0]) / 2**20,
            "attack_statuses": sorted(status for status, _ in attacks),
            "attack_seconds_max": max(seconds for _, seconds in attacks),
            "normal_requests": latencies,
            "normal_seconds_max": max(p["seconds"] for p in latencies)}


def run_attacks(model: Path, code: Path, normal_image: Path, args) -> dict:
    normal = multipart([(normal_image.name, normal_image.read_bytes())])
    results = {"code": str(code)}
    server, port = start_server(model, code)
    try:
        for _ in range(3):
            one_request(port, normal)  # warm-up
        results["idle_one_image_seconds"] = min(one_request(port, normal)[1] for _ in range(3))
        print(f"{code}: memory attack", flush=True)
        results["held_uploads"] = held_uploads(port, server.pid, 100, args.hold)
        print(f"{code}: slow sockets", flush=True)
        results["slow_sockets"] = slow_sockets(port, 400, args.hold)
        print(f"{code}: big PNG flood", flush=True)
        results["big_png_flood"] = big_png_flood(port, normal, 4, 16, 7000, 3)
        # the worst the default budget admits: one 24-megapixel PNG decoded per request
        print(f"{code}: budget-sized PNG flood", flush=True)
        results["budget_png_flood"] = big_png_flood(port, normal, 4, 16, 4898, 3)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # still decoding a flood: no graceful end
            server.kill()
            server.wait()
    return results


def attack_model(tmp: Path) -> Path:
    """A logreg on efficientnet_lite0 features of 12 animals per class (minutes, not hours)."""
    from features.settings import NetworkSettings
    from pipeline.workflows import ExtractSettings, extract_dataset, train_store

    small = tmp / "animals12"
    for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
        (small / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:12]:
            (small / folder.name / image.name).symlink_to(image)
    store = extract_dataset(ExtractSettings(
        small, network=NetworkSettings("efficientnet_lite0"))).result.path
    return train_store(store, classifier="logreg", cv=2, grid=[1.0])[0].model_path


def main_attacks(args) -> None:
    from machine import cpu_info, describe
    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLEARN_ARTIFACTS"] = tmp
        model = attack_model(Path(tmp))
        normal_image = sorted((DATA / "cats").glob("*.jpg"))[0]
        runs = [run_attacks(model, REPO, normal_image, args)]
        if args.baseline:
            runs.insert(0, run_attacks(model, args.baseline.resolve(), normal_image, args))
    machine = cpu_info()
    table = Table(title=f"tlearn serve under attack, 127.0.0.1 ({describe(machine)})")
    for col in ("code", "RSS before MB", "RSS peak MB", "RSS after MB", "uploads dropped",
                "slow sockets dropped", "last dropped s", "1-image s idle",
                "1-image s under 49 MP flood", "under 24 MP flood"):
        table.add_column(col, justify="right")
    for run in runs:
        held, slow, flood = run["held_uploads"], run["slow_sockets"], run["big_png_flood"]
        last = slow["last_dropped_after_s"]
        table.add_row(Path(run["code"]).name, f"{held['rss_mb_before']:.0f}",
                      f"{held['rss_mb_peak']:.0f}", f"{held['rss_mb_after']:.0f}",
                      f"{held['dropped_by_server']}/{held['connections']}",
                      f"{slow['dropped_by_server']}/{slow['connections']}",
                      "-" if last is None else f"{last:.1f}",
                      f"{run['idle_one_image_seconds']:.2f}",
                      f"{flood['normal_seconds_max']:.2f}",
                      f"{run['budget_png_flood']['normal_seconds_max']:.2f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2))
    print(f"wrote {args.out}")


def token_check_cost(calls: int = 100_000) -> dict:
    """Microseconds the token layer adds to one request, in process (best of 5 runs)."""
    import asyncio

    from pipeline.serving import BearerToken

    async def endpoint(scope, receive, send) -> None:
        return None

    token = secrets.token_urlsafe(32)
    scope = {"type": "http", "path": "/predict", "headers": [
        (b"host", b"127.0.0.1"), (b"user-agent", b"bench"), (b"accept", b"*/*"),
        (b"content-type", b"multipart/form-data; boundary=x"),
        (b"authorization", f"Bearer {token}".encode())]}
    guarded = BearerToken(endpoint, token)

    async def seconds(app) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await app(scope, None, None)
        return time.perf_counter() - t0

    bare = min(asyncio.run(seconds(endpoint)) for _ in range(5))
    checked = min(asyncio.run(seconds(guarded)) for _ in range(5))
    return {"calls": calls, "us_without": 1e6 * bare / calls, "us_with": 1e6 * checked / calls,
            "us_added": 1e6 * (checked - bare) / calls}


def model_info_cost(calls: int = 500, runs: int = 40) -> dict:
    """Microseconds of a whole ``GET /model`` through the app without and with a token,
    in process (no sockets: the noise of a shared machine's network stack stays out);
    best of ``runs`` alternating runs each."""
    import asyncio

    import numpy as np

    from pipeline.image_classifiers import ImageClassifier
    from pipeline.serving import create_app

    model = ImageClassifier("toy", 8, ["a", "b"], True, {},
                            lambda images: np.zeros((len(images), 2), np.float32))
    token = secrets.token_urlsafe(32)
    apps = {"off": create_app(model), "on": create_app(model, token=token)}
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    scopes = {name: {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "GET", "scheme": "http", "path": "/model", "raw_path": b"/model",
                     "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
                     "client": ("127.0.0.1", 50000),
                     "headers": headers + ([(b"authorization", f"Bearer {token}".encode())]
                                           if name == "on" else [])} for name in apps}
    statuses = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def seconds(name: str) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await apps[name](dict(scopes[name]), receive, send)
        return time.perf_counter() - t0

    best = {"off": float("inf"), "on": float("inf")}
    for _ in range(runs):
        for name in best:
            best[name] = min(best[name], asyncio.run(seconds(name)))
    if set(statuses) != {200}:
        raise RuntimeError(f"GET /model answered {sorted(set(statuses))}")
    return {"calls": calls, "runs": runs, "us_without": 1e6 * best["off"] / calls,
            "us_with": 1e6 * best["on"] / calls}


def main_token(args) -> None:
    from machine import cpu_info, describe
    from rich.console import Console
    from rich.table import Table

    from features.runtimes import RUNTIMES

    runtime = "openvino" if RUNTIMES["openvino"].is_available() else "tensorflow"
    token = secrets.token_urlsafe(32)
    images = sorted((DATA / "cats").glob("*.jpg"))[:24]
    payloads = [multipart([(p.name, p.read_bytes())]) for p in images]
    # (request, payloads, clients, requests per round): one JPEG per /predict; /model
    # answers in about a millisecond, so it gets more requests per round
    levels = [("POST /predict", payloads, 1, args.requests),
              ("POST /predict", payloads, 16, args.requests),
              ("GET /model", [None], 16, 5 * args.requests)]
    pooled: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLEARN_ARTIFACTS"] = tmp
        model = attack_model(Path(tmp))
        servers = []
        try:
            for name, env in (("off", {}), ("on", {"TLEARN_TOKEN": token})):
                servers.append((name, *start_server(model, REPO, ["--runtime", runtime], env)))
            variants = [(name, port, {"Authorization": f"Bearer {token}"} if name == "on"
                         else None) for name, _, port in servers]
            for name, port, headers in variants:
                for payload in payloads[:5] + [None] * 5:  # warm-up, and the token works
                    status = one_request(port, payload, headers)[0]
                    if status != 200:
                        raise RuntimeError(f"token {name}: answered {status}")
            for round_ in range(args.rounds):
                for what, level_payloads, clients, requests in levels:
                    # alternate which goes first, so a drift in load favours neither
                    for name, port, headers in variants[::1 if round_ % 2 else -1]:
                        results, wall = run_load(port, level_payloads, requests, clients,
                                                 args.time_limit, headers)
                        entry = pooled.setdefault((what, clients, name), [[], 0.0, []])
                        entry[0] += results
                        entry[1] += wall
                        entry[2].append(summary(results, wall)["requests_per_second"])
                print(f"round {round_ + 1} of {args.rounds} done", flush=True)
        finally:
            for _, server, _ in servers:
                server.terminate()
                server.wait(timeout=60)
    rows = [{"request": what, "clients": clients, "token": name,
             **summary(results, wall), "round_requests_per_second": per_round}
            for (what, clients, name), (results, wall, per_round) in pooled.items()]
    for row in rows:  # rounds ran in pairs: the ratio within each pair cancels slow drifts
        if row["token"] == "on":
            off = next(r for r in rows if r["token"] == "off" and
                       (r["request"], r["clients"]) == (row["request"], row["clients"]))
            ratios = sorted(a / b for a, b in zip(row["round_requests_per_second"],
                                                   off["round_requests_per_second"],
                                                   strict=True))
            row["median_round_ratio_on_off"] = ratios[len(ratios) // 2]
            row["round_ratios_on_off"] = ratios
    check = token_check_cost()
    whole = model_info_cost()
    machine = cpu_info()
    table = Table(title=f"tlearn serve without and with the token check, {runtime}, "
                        f"127.0.0.1, {args.rounds} alternating rounds of {args.requests} "
                        f"requests ({describe(machine)})")
    for col in ("request", "clients", "token", "answered", "other", "req/s", "p50 ms",
                "p99 ms", "on/off req/s, median (min-max) of rounds"):
        table.add_column(col, justify="right")
    for r in rows:
        ratios = r.get("round_ratios_on_off")
        table.add_row(r["request"], str(r["clients"]), r["token"], str(r["answered"]),
                      str(r["other_errors"]), f"{r['requests_per_second']:.1f}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                      f"{r['median_round_ratio_on_off']:.3f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
                      if ratios else "")
    Console().print(table)
    print(f"the check itself, in process: {check['us_added']:.2f} us per request "
          f"({check['us_without']:.2f} -> {check['us_with']:.2f} us per call); a whole "
          f"GET /model in process: {whole['us_without']:.0f} us without, "
          f"{whole['us_with']:.0f} us with the token")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "runtime": runtime,
                                    "rounds": args.rounds, "requests_per_round": args.requests,
                                    "rows": rows, "check_in_process": check,
                                    "model_info_in_process": whole}, indent=2))
    print(f"wrote {args.out}")


def run_variant(model: Path, runtime: str, batching: bool, images: list[Path], args) -> dict:
    server, port = start_server(model, REPO, ["--runtime", runtime,
                                              "--batching" if batching else "--no-batching"])
    try:
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
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default bench/results/serve.json, or "
                             "serve_attacks.json with --attacks)")
    parser.add_argument("--attacks", action="store_true",
                        help="measure memory, slow sockets and CPU under hostile load instead")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="with --attacks: also attack the code in this folder")
    parser.add_argument("--hold", type=float, default=45.0,
                        help="with --attacks: seconds a held connection waits to be dropped")
    parser.add_argument("--token", action="store_true",
                        help="measure the bearer-token check's cost instead")
    parser.add_argument("--rounds", type=int, default=6,
                        help="with --token: alternating rounds per level")
    args = parser.parse_args()
    if args.token:
        if not DATA.is_dir():
            sys.exit(f"{DATA} is absent: this benchmark needs ../shared/datasets/animals")
        args.out = args.out or REPO / "bench" / "results" / "serve_token.json"
        main_token(args)
        return
    if args.attacks:
        if not DATA.is_dir():
            sys.exit(f"{DATA} is absent: this benchmark needs ../shared/datasets/animals")
        args.out = args.out or REPO / "bench" / "results" / "serve_attacks.json"
        main_attacks(args)
        return
    args.out = args.out or REPO / "bench" / "results" / "serve.json"
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
        from features.settings import NetworkSettings
        from pipeline.workflows import ExtractSettings, extract_dataset, train_store

        store = REPO / "artifacts" / "bench" / "animals-lite0.h5"
        if not store.exists():
            store = extract_dataset(ExtractSettings(
                DATA, network=NetworkSettings("efficientnet_lite0"))).result.path
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
