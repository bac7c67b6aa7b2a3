"""The HTTP API through FastAPI's test client: happy paths, hostile input, concurrency."""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline.serving import ServeLimits, create_app, load_served_model, parse_multipart
from pipeline.workflows import extract_dataset, train_store
from tests.conftest import make_image_folder

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
        store = extract_dataset(data, **TINY).result.path
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

    app = create_app(load_served_model(model_path[0]),
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
