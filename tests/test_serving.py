"""The HTTP API through FastAPI's test client: happy paths, hostile input, concurrency."""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline.image_classifiers import load_image_classifier
from pipeline.serving import ServeLimits, create_app, parse_multipart
from pipeline.workflows import train_store
from tests.conftest import extract, make_image_folder

TINY = {"backbone": "vgg16", "weights": "none", "input_size": 32, "pooling": "avg",
        "batch_size": 8}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("serve")
    old = os.environ.get("TLEARN_ARTIFACTS")
    os.environ["TLEARN_ARTIFACTS"] = str(root / "artifacts")
    try:
        data = make_image_folder(root / "pets", per_class=8)
        store = extract(data, **TINY).result.path
        # a decisive model: on 12 images every C ties and the tie rule picks the weakest fit
        path = train_store(store, classifier="logreg", cv=2, grid=[1.0])[0].model_path
    finally:
        if old is None:
            os.environ.pop("TLEARN_ARTIFACTS")
        else:
            os.environ["TLEARN_ARTIFACTS"] = old
    return path, data


@pytest.fixture(scope="module")
def client(model_path):
    from fastapi.testclient import TestClient

    app = create_app(load_image_classifier(model_path[0]),
                     ServeLimits(max_upload_bytes=200_000, max_images=4, max_pixels=300 * 300))
    with TestClient(app) as c:
        yield c


def _png(colour=(220, 40, 40), size=(40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_health_model_and_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["classes"] == ["cat", "dog"] and info["scores"] == "probability"
    assert info["feature_spec"]["backbone"] == "vgg16"
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/").text
    assert "<script>" in page and "http" not in page.split("<script>")[1].split("fetch(")[0]


def test_predict_several_images(client, model_path):
    _, data = model_path
    files = [("files", ("a.jpg", (data / "cat" / "cat_000.jpg").read_bytes(), "image/jpeg")),
             ("files", ("b.png", (data / "dog" / "dog_001.PNG").read_bytes(), "image/png"))]
    response = client.post("/predict?top=2", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["label"] for r in results] == ["cat", "dog"]
    assert [r["filename"] for r in results] == ["a.jpg", "b.png"]
    assert len(results[0]["top"]) == 2
    assert abs(sum(t["score"] for t in results[0]["top"]) - 1) < 1e-5
    assert response.json()["ms"] > 0
    assert all(isinstance(r["unknown"], bool) and r["unknown_score"] >= 0 for r in results)
    # white noise of no trained colour: flagged, and still given its best class
    odd = client.post("/predict", files=[("files", ("w.png", _png((255, 255, 255)),
                                                    "image/png"))]).json()["results"][0]
    assert odd["unknown"] is True and odd["label"] in {"cat", "dog"}


@pytest.mark.parametrize("payload,status,needle", [
    ([("files", ("x.txt", b"not an image", "text/plain"))], 400, "not an image"),
    ([("files", ("t.png", _png()[:60], "image/png"))], 400, "truncated image"),
    ([("files", ("e.png", b"", "image/png"))], 400, "empty"),
    ([("files", ("big.png", _png(size=(400, 400)), "image/png"))], 400, "decompression bomb"),
    ([("files", (f"{i}.png", _png(), "image/png")) for i in range(5)], 400, "at most 4"),
    ([("files", ("huge.png", b"\x89PNG" + b"0" * 250_000, "image/png"))], 413, "limit"),
])
def test_hostile_uploads(client, payload, status, needle):
    response = client.post("/predict", files=payload)
    assert response.status_code == status, response.text
    body = response.json()
    text = body["detail"] + " ".join(e["error"] for e in body.get("errors", []))
    assert needle in text
    assert client.get("/health").status_code == 200  # still serving


def test_not_multipart_and_no_files(client):
    assert client.post("/predict", content=b"raw", headers={
        "content-type": "application/octet-stream"}).status_code == 400
    assert client.post("/predict", data={"field": "value"}).status_code == 400


def test_client_paths_are_never_used(client):
    files = [("files", ("../../etc/passwd", _png(), "image/png"))]
    response = client.post("/predict", files=files)
    assert response.status_code == 200
    assert response.json()["results"][0]["filename"] == "passwd"


def test_concurrent_requests_match_sequential(client):
    colours = [(220, 40, 40), (40, 200, 60), (30, 30, 30), (200, 200, 40)] * 6
    bodies = [[("files", (f"{i}.png", _png(c), "image/png"))] for i, c in enumerate(colours)]

    def ask(files):
        return client.post("/predict?top=2", files=files).json()["results"][0]

    sequential = [ask(b) for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(ask, bodies))
    for a, b in zip(sequential, parallel, strict=True):
        assert a["label"] == b["label"] and a["filename"] == b["filename"]
        assert np.isclose(a["score"], b["score"], atol=1e-5)


def test_parse_multipart_keeps_bytes_in_memory():
    body = (b"--XX\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\nDATA\r\n--XX--\r\n")
    assert parse_multipart(body, "multipart/form-data; boundary=XX") == [("a.png", b"DATA")]


def test_batcher_merges_concurrent_requests_into_one_forward_pass():
    import threading

    import numpy as np

    from pipeline.image_classifiers import ImageClassifier
    from pipeline.serving import MicroBatcher

    calls = []
    busy, release = threading.Event(), threading.Event()

    def scores(images):
        calls.append(len(images))
        if len(calls) == 1:
            busy.set()
            release.wait(10)  # hold the worker while more requests queue up
        # one score column per image: its first pixel, so each answer is traceable
        return images[:, 0, 0, :1].astype(np.float32)

    model = ImageClassifier("m", 2, ["x"], True, {}, scores)
    batcher = MicroBatcher(model, max_batch=32, max_wait=0.05)
    first = batcher.submit(np.full((1, 2, 2, 3), 1, np.uint8))
    assert busy.wait(10)
    later = [batcher.submit(np.full((k, 2, 2, 3), 10 + k, np.uint8)) for k in (1, 2, 3)]
    release.set()
    assert first.result(10).ravel().tolist() == [1]
    for k, future in zip((1, 2, 3), later, strict=True):
        assert future.result(10).ravel().tolist() == [10 + k] * k
    assert calls == [1, 6]  # the three queued requests shared one forward pass


def _toy_model(scores=None, name="toy"):
    from pipeline.image_classifiers import ImageClassifier

    def mean_red(images):
        red = images[:, :, :, 0].mean(axis=(1, 2)) / 255.0
        return np.column_stack([red, 1 - red])

    return ImageClassifier(name, 8, ["red", "other"], True, {}, scores or mean_red)


@pytest.fixture
def live_server():
    """Start an app with uvicorn on a free loopback port; yields its base URL."""
    import socket
    import threading

    import uvicorn

    from pipeline.serving import server_config

    servers = []

    def start(app, limits=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(server_config(app, limits, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        import time

        import httpx

        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def test_health_answers_while_an_upload_is_being_decoded(live_server, monkeypatch):
    import threading

    import httpx

    import pipeline.serving as serving

    real_decode = serving.decode_image
    decoding, release = threading.Event(), threading.Event()

    def held_decode(*args, **kwargs):
        decoding.set()
        release.wait(60)  # a large photo's decode, held until /health has answered
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(serving, "decode_image", held_decode)
    base = live_server(create_app(_toy_model()))
    files = [("files", (f"{i}.png", _png(), "image/png")) for i in range(2)]
    done = []
    upload = threading.Thread(target=lambda: done.append(
        httpx.post(f"{base}/predict", files=files, timeout=90)))
    upload.start()
    try:
        assert decoding.wait(30)
        # The decode cannot finish before release: every answer below came while it ran.
        # A decode on the event loop would leave /health unanswered past the timeout.
        for _ in range(3):
            assert httpx.get(f"{base}/health", timeout=20).status_code == 200
        assert not release.is_set() and upload.is_alive()
    finally:
        release.set()
        upload.join(60)
    assert done and done[0].status_code == 200


def test_full_queue_answers_503_with_retry_after_and_keeps_serving():
    import threading

    from fastapi.testclient import TestClient

    release = threading.Event()
    busy = threading.Event()

    def stuck(images):
        busy.set()
        release.wait(30)
        return np.tile([0.9, 0.1], (len(images), 1))

    release.set()  # let the start-up warm-up through
    app = create_app(_toy_model(stuck), ServeLimits(max_queued=2), max_batch=1)
    busy.clear()
    release.clear()
    with TestClient(app) as client:
        one = [("files", ("a.png", _png(), "image/png"))]
        results = []
        first = threading.Thread(target=lambda: results.append(client.post("/predict",
                                                                          files=one)))
        first.start()
        assert busy.wait(10)
        second = threading.Thread(target=lambda: results.append(client.post("/predict",
                                                                           files=one)))
        second.start()
        for _ in range(200):  # until the second request is queued behind the first
            if client.get("/health").json()["queued_images"] == 2:
                break
            threading.Event().wait(0.02)
        refused = client.post("/predict", files=one)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        release.set()
        first.join(30)
        second.join(30)
        assert [r.status_code for r in results] == [200, 200]
        assert client.post("/predict", files=one).status_code == 200  # serving again


def test_multipart_is_parsed_chunk_by_chunk_and_stops_at_the_first_extra_file():
    from pipeline.serving import MultipartFiles, UploadError

    def part(name, data):
        return (b"--XX\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name
                + b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n")

    body = part(b"a.png", b"AAAA" * 50) + part(b"b.png", b"BB") + b"--XX--\r\n"
    parts = MultipartFiles("multipart/form-data; boundary=XX", max_files=2, max_bytes=10_000)
    for i in range(0, len(body), 7):
        parts.feed(body[i:i + 7])
    assert [(n, bytes(d)) for n, d in parts.finish()] == [("a.png", b"AAAA" * 50),
                                                           ("b.png", b"BB")]
    three = part(b"a.png", b"A") + part(b"b.png", b"B") + part(b"c.png", b"C" * 5000)
    parts = MultipartFiles("multipart/form-data; boundary=XX", max_files=2, max_bytes=10_000)
    fed = 0
    with pytest.raises(UploadError, match="more than 2 images"):
        for i in range(0, len(three), 64):
            parts.feed(three[i:i + 64])
            fed = i + 64
    assert fed < len(three) - 4000  # refused at the third part's headers, not at the end


def test_server_has_its_own_pixel_limit():
    from pipeline.serving import SERVE_MAX_PIXELS

    assert ServeLimits().max_pixels == SERVE_MAX_PIXELS < 89_478_485


def test_model_info_says_how_sure_its_accuracy_is(client):
    metrics = client.get("/model").json()["metrics"]
    lo, hi = metrics["accuracy_ci"]
    assert lo <= metrics["accuracy"] <= hi
    assert metrics["scores"] == "probability" and metrics["ece"] is not None
    lo, hi = metrics["balanced_accuracy_ci"]
    assert lo <= metrics["balanced_accuracy"] <= hi


def _multipart(files, boundary="XX"):
    body = b""
    for name, data in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                 f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_good_images_are_classified_beside_a_bad_one(client):
    files = [("files", (f"{i}.png", _png(), "image/png")) for i in range(3)]
    files.insert(2, ("files", ("broken.png", _png()[:60], "image/png")))
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(r["index"], r["filename"]) for r in body["results"]] == [
        (0, "0.png"), (1, "1.png"), (3, "2.png")]
    assert body["errors"] == [{"index": 2, "filename": "broken.png",
                               "error": "truncated image"}]
    none_usable = client.post("/predict", files=[files[2], ("files", ("e.png", b"", "x"))])
    assert none_usable.status_code == 400
    assert [e["filename"] for e in none_usable.json()["errors"]] == ["broken.png", "e.png"]


def test_each_request_has_a_budget_of_decoded_pixels(model_path, monkeypatch):
    from fastapi.testclient import TestClient

    import pipeline.serving as serving

    decoded = []
    real = serving.decode_image
    monkeypatch.setattr(serving, "decode_image", lambda data, *a, **k: decoded.append(
        len(data)) or real(data, *a, **k))

    def jpeg(size):
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 30, 30)).save(buf, format="JPEG")
        return buf.getvalue()

    app = create_app(load_image_classifier(model_path[0]), ServeLimits(
        max_pixels=10_000_000, max_request_pixels=100_000))
    with TestClient(app) as c:
        # A 2000x2000 JPEG decodes at 1/8 scale (62,500 pixels) for a 32-pixel network:
        # it fits the budget; the same picture as a PNG (4 million pixels) does not.
        big = [("files", ("photo.jpg", jpeg((2000, 2000)), "image/jpeg")),
               ("files", ("scan.png", _png(size=(2000, 2000)), "image/png")),
               ("files", ("small.png", _png(size=(150, 150)), "image/png")),
               ("files", ("more.png", _png(size=(150, 150)), "image/png"))]
        body = c.post("/predict", files=big).json()
    assert [r["filename"] for r in body["results"]] == ["photo.jpg", "small.png"]
    refused = {e["filename"]: e["error"] for e in body["errors"]}
    assert set(refused) == {"scan.png", "more.png"}
    assert "2000x2000" in refused["scan.png"] and "100,000 decoded pixels" in refused["scan.png"]
    assert len(decoded) == 4  # each header was read, the refused pixels never decoded


def test_a_too_long_multipart_boundary_is_a_client_error(client):
    boundary = "b" * 300
    response = client.post("/predict", content=_multipart([("a.png", _png())], boundary),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400 and "boundary" in response.json()["detail"].lower()


def test_model_names_are_escaped_on_a_page_with_a_content_security_policy():
    from fastapi.testclient import TestClient

    name = "<img src=x onerror=alert(document.domain)>"
    with TestClient(create_app(_toy_model(name=name))) as c:
        response = c.get("/")
    assert "<img src=x" not in response.text and "&lt;img src=x" in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert "script-src 'sha256-" in policy and "connect-src 'self'" in policy


def test_serve_refuses_limits_that_are_not_finite_positive_numbers(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    for option, value in [("--max-upload-mb", "nan"), ("--max-upload-mb", "inf"),
                          ("--max-upload-mb", "-1"), ("--max-upload-mb", "0"),
                          ("--body-timeout", "nan"), ("--body-timeout", "0")]:
        result = CliRunner().invoke(app, ["serve", str(tmp_path / "m.joblib"), option, value])
        lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(lines) == 1 and option in lines[0] and "at most" in lines[0], lines


def _raw(base, data: bytes):
    """A loopback socket that has sent ``data`` and holds the connection open."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(data)
    return sock


def _closed_within(sock, seconds: float) -> bytes | None:
    """What the server sent before closing ``sock``, or None if it still held it."""
    import time

    sock.settimeout(0.5)
    received, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_slow_clients_are_dropped_and_uploads_are_read_a_few_at_a_time(live_server,
                                                                       monkeypatch):
    import threading

    import pipeline.serving as serving

    reading, most = [0], [0]
    lock = threading.Lock()
    real_read = serving._read_files

    async def counted(request, limits):
        with lock:
            reading[0] += 1
            most[0] = max(most[0], reading[0])
        try:
            return await real_read(request, limits)
        finally:
            with lock:
                reading[0] -= 1

    monkeypatch.setattr(serving, "_read_files", counted)
    limits = ServeLimits(max_uploads=2, body_timeout=1.0)
    base = live_server(create_app(_toy_model(), limits), limits)
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=XX\r\nContent-Length: 1000000\r\n\r\n")
    part = (b"--XX\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\""
            b"\r\n\r\n")
    bodies = [_raw(base, head + part + b"x" * 50_000) for _ in range(5)]
    silent = [_raw(base, b"") for _ in range(3)]
    trickled = [_raw(base, b"POST /predict HTTP/1.1\r\nHo") for _ in range(3)]
    try:
        # The timeout is 1 s; before, none of these was ever dropped (30 s bound here).
        answers = [_closed_within(sock, 30) for sock in bodies + silent + trickled]
        assert None not in answers, answers
        # 408 for a body too slow, 503 for one still waiting for a slot at its deadline
        assert {a.split(b" ")[1] for a in answers[:5]} <= {b"408", b"503"}, answers[:5]
        assert answers[5:] == [b""] * 6
        assert most[0] == 2
    finally:
        for sock in bodies + silent + trickled:
            sock.close()
    import httpx

    one = [("files", ("a.png", _png(), "image/png"))]
    assert httpx.post(f"{base}/predict", files=one, timeout=30).status_code == 200


def test_a_client_leaving_mid_upload_logs_one_line_not_a_traceback(live_server):
    import logging
    import time

    import httpx

    base = live_server(create_app(_toy_model()))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                b"boundary=XX\r\nContent-Length: 1000000\r\n\r\n--XX\r\n"
                b"Content-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n")
        for _ in range(3):
            sock = _raw(base, head + b"y" * 100_000)
            time.sleep(0.2)
            sock.close()
        for _ in range(100):  # until the server has noticed all three
            if len(records) >= 3:
                break
            time.sleep(0.05)
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(records) == 3 and not any(r.exc_info for r in records), records
    assert all("left before its upload ended" in r.getMessage() for r in records)


def test_a_small_image_never_waits_behind_large_decodes(live_server, monkeypatch):
    import threading

    import httpx

    import pipeline.serving as serving

    real_decode = serving.decode_image
    release, lock = threading.Event(), threading.Lock()
    large, most = [0], [0]

    def held_decode(data, *args, on_size, **kwargs):
        def size_then_hold(width, height):
            on_size(width, height)  # takes a turn for large images
            if width * height > serving.HEAVY_DECODE_PIXELS:
                with lock:
                    large[0] += 1
                    most[0] = max(most[0], large[0])
                release.wait(60)  # a long decode, held until the small image is answered
                with lock:
                    large[0] -= 1
        return real_decode(data, *args, on_size=size_then_hold, **kwargs)

    monkeypatch.setattr(serving, "decode_image", held_decode)
    base = live_server(create_app(_toy_model(), ServeLimits(max_pixels=10_000_000,
                                                            decode_workers=2)))
    big = [("files", ("big.png", _png(size=(2100, 2100)), "image/png"))]
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        httpx.post(f"{base}/predict", files=big, timeout=90).status_code)) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(600):  # until two large decodes hold their turns
            if large[0] == 2:
                break
            threading.Event().wait(0.05)
        assert large[0] == 2
        small = httpx.post(f"{base}/predict", files=[("files", ("s.png", _png(), "image/png"))],
                           timeout=30)
        assert small.status_code == 200 and not release.is_set() and large[0] == 2
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert answers == [200, 200, 200] and most[0] == 2  # the third large one took its turn


def test_a_pipelined_request_keeps_its_connection_past_the_header_deadline(live_server,
                                                                          monkeypatch):
    import threading

    import pipeline.serving as serving

    real_decode = serving.decode_image
    decoding = threading.Event()

    def slow_decode(*args, **kwargs):
        decoding.set()
        threading.Event().wait(2.5)  # past the 1 s deadline for the next request's headers
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(serving, "decode_image", slow_decode)
    limits = ServeLimits(body_timeout=1.0)
    base = live_server(create_app(_toy_model(), limits), limits)
    body = _multipart([("a.png", _png())])
    second = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
              b"boundary=XX\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    sock = _raw(base, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + second)
    try:
        answer = b""
        sock.settimeout(30)
        while answer.count(b"HTTP/1.1 ") < 2 or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    finally:
        sock.close()
    assert decoding.is_set()
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer


# -- the token ----------------------------------------------------------------------------------

TOKEN = "k3Y-" + "x" * 28


def test_a_token_guards_everything_but_the_page_and_health_on_a_real_server(live_server):
    import httpx

    base = live_server(create_app(_toy_model(), token=TOKEN))
    one = [("files", ("a.png", _png(), "image/png"))]
    for headers, error in [({}, None), ({"Authorization": "Bearer " + TOKEN[:-1] + "y"},
                                        "invalid_token"),
                           ({"Authorization": "Basic " + TOKEN}, "invalid_token"),
                           ({"Authorization": TOKEN}, "invalid_token")]:
        for method, path in [("POST", "/predict"), ("GET", "/model"), ("GET", "/docs"),
                             ("GET", "/openapi.json"), ("GET", "/redoc")]:
            response = httpx.request(method, base + path, headers=headers, timeout=30,
                                     files=one if method == "POST" else None)
            assert response.status_code == 401, (path, headers, response.text)
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith("Bearer") and (error is None) == (
                "error=" not in challenge), challenge
            assert TOKEN not in response.text
    assert httpx.get(f"{base}/health", timeout=30).json()["status"] == "ok"
    page = httpx.get(f"{base}/", timeout=30)
    assert page.status_code == 200 and '"token": true' in page.text and TOKEN not in page.text
    for scheme in ("Bearer", "bearer"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        answer = httpx.post(f"{base}/predict", files=one, headers=headers, timeout=30)
        assert answer.status_code == 200 and answer.json()["results"][0]["label"] == "red"
        assert httpx.get(f"{base}/model", headers=headers, timeout=30).status_code == 200
        assert httpx.get(f"{base}/docs", headers=headers, timeout=30).status_code == 200
        assert "/predict" in httpx.get(f"{base}/openapi.json", headers=headers,
                                       timeout=30).json()["paths"]


def test_without_a_token_nothing_asks_for_one():
    from fastapi.testclient import TestClient

    with TestClient(create_app(_toy_model())) as c:
        assert c.get("/model").status_code == 200 and c.get("/docs").status_code == 200
        assert '"token": false' in c.get("/").text


def _serve_cli(monkeypatch, args, env=None):
    """Run ``tlearn serve`` in-process; returns (result, the app it would have served)."""
    from typer.testing import CliRunner

    import pipeline.serving as serving
    from pipeline.cli import app

    monkeypatch.setattr(serving, "load_image_classifier", lambda *a, **k: _toy_model())
    served = _catch_served_app(monkeypatch)
    result = CliRunner().invoke(app, ["serve", *args], env=env)
    return result, served


def _catch_served_app(monkeypatch) -> list:
    """Make ``serve`` put the app it would run in the returned list instead of running it.

    uvicorn's Config is not built either: it points logging at the streams of the moment
    (CliRunner's, closed once the command returns).
    """
    from types import SimpleNamespace

    import uvicorn

    import pipeline.serving as serving

    served = []
    monkeypatch.setattr(serving, "server_config", lambda app, *a, **k: app)
    monkeypatch.setattr(uvicorn, "Server", lambda app: SimpleNamespace(
        run=lambda: served.append(app)))
    return served


def _one_error_line(result) -> str:
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org", ""])
def test_serving_beyond_loopback_without_a_token_is_refused_before_loading(
        model_path, monkeypatch, host):
    result, served = _serve_cli(monkeypatch, [str(model_path[0]), "--host", host],
                                env={"TLEARN_TOKEN": None})
    line = _one_error_line(result)
    assert "TLEARN_TOKEN" in line and "--token-file" in line
    assert "secrets.token_urlsafe" in line and served == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost",
                                  "::ffff:127.0.0.1"])
def test_loopback_needs_no_token_unless_one_is_given(model_path, monkeypatch, host):
    from fastapi.testclient import TestClient

    result, served = _serve_cli(monkeypatch, [str(model_path[0]), "--host", host],
                                env={"TLEARN_TOKEN": None})
    assert result.exit_code == 0, result.output
    with TestClient(served[0]) as c:
        assert c.get("/model").status_code == 200
    result, served = _serve_cli(monkeypatch, [str(model_path[0]), "--host", host],
                                env={"TLEARN_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    with TestClient(served[0]) as c:
        assert c.get("/model").status_code == 401
        assert c.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_token_file_is_read_once_and_stripped(model_path, monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    path.chmod(0o600)
    result, served = _serve_cli(monkeypatch, [str(model_path[0]), "--host", "0.0.0.0",
                                              "--token-file", str(path)],
                                env={"TLEARN_TOKEN": None})
    assert result.exit_code == 0, result.output
    assert "TLS" in result.output  # plain HTTP off loopback: said at start
    path.write_text("another-token-of-enough-length")  # read once: a change does not count
    with TestClient(served[0]) as c:
        assert c.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize("content,mode,needle", [
    (None, 0o600, "cannot read"),
    ("", 0o600, "is empty"),
    (" \n\n", 0o600, "is empty"),
    ("short-token\n", 0o600, "fewer than 16"),
    ("two words in one token", 0o600, "printable ASCII"),
    ("ünïcødé-tøkèn-of-length", 0o600, "printable ASCII"),
    (TOKEN, 0o644, "chmod 600"),
    (TOKEN, 0o640, "chmod 600"),
    ("a folder", 0o700, "cannot read"),
])
def test_a_bad_token_file_is_refused_in_one_line(model_path, monkeypatch, tmp_path, content,
                                                 mode, needle):
    path = tmp_path / "token"
    if content == "a folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
        path.chmod(mode)
    result, served = _serve_cli(monkeypatch, [str(model_path[0]), "--token-file", str(path)],
                                env={"TLEARN_TOKEN": None})
    line = _one_error_line(result)
    assert needle in line and str(path) in line and served == []


@pytest.mark.parametrize("env,needle", [({"TLEARN_TOKEN": ""}, "TLEARN_TOKEN is empty"),
                                        ({"TLEARN_TOKEN": "abc"}, "fewer than 16"),
                                        ({"TLEARN_TOKEN": TOKEN, "file": True}, "keep one")])
def test_a_bad_token_in_the_environment_is_refused_in_one_line(model_path, monkeypatch,
                                                               tmp_path, env, needle):
    args = [str(model_path[0])]
    if env.pop("file", False):
        path = tmp_path / "token"
        path.write_text(TOKEN)
        path.chmod(0o600)
        args += ["--token-file", str(path)]
    result, served = _serve_cli(monkeypatch, args, env=env)
    assert needle in _one_error_line(result) and served == []


def test_the_library_needs_a_token_beyond_loopback_too(model_path, monkeypatch):
    from fastapi.testclient import TestClient

    from features.errors import UserInputError
    from pipeline.serving import serve

    served = _catch_served_app(monkeypatch)
    with pytest.raises(UserInputError, match="without a token"):
        serve(model_path[0], host="0.0.0.0")
    with pytest.raises(UserInputError, match="fewer than 16"):
        create_app(_toy_model(), token="short")
    serve(model_path[0], host="0.0.0.0", token=TOKEN)
    with TestClient(served[0]) as c:
        assert c.get("/model").status_code == 401
        assert c.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_stage3_model_says_unknown_as_a_stage2_model_does(tmp_path):
    from fastapi.testclient import TestClient

    from pipeline.workflows import predict_files
    from tests.conftest import save_stage3_model, write_image

    known = [write_image(tmp_path / f"k{i}.png", (220, 40, 40) if i % 2 == 0 else
                         (40, 60, 220), seed=i) for i in range(12)]
    path = save_stage3_model(tmp_path / "scratch.keras", ["red", "blue"], known=known)
    white = tmp_path / "white.png"
    white.write_bytes(_png((255, 255, 255)))
    expected = predict_files(path, [known[0], white])
    with TestClient(create_app(load_image_classifier(path))) as c:
        info = c.get("/model").json()
        results = c.post("/predict", files=[
            ("files", ("k.png", known[0].read_bytes(), "image/png")),
            ("files", ("w.png", white.read_bytes(), "image/png"))]).json()["results"]
    assert info["unknown"]["coverage"] == 0.95
    assert info["unknown"]["threshold"] == load_image_classifier(path).unknown_threshold
    for want, have in zip(expected, results, strict=True):
        assert have["unknown"] == want["unknown"]
        assert have["unknown_score"] == pytest.approx(want["unknown_score"], rel=1e-5)
