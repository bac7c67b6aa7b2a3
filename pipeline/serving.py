"""Serve a trained model over HTTP: a JSON API and a self-contained upload page.

The model (and its backbone) is loaded once. Images from concurrent requests go
through one :class:`MicroBatcher` thread, which runs them through the network in
shared batches: no two requests touch the model at once, and the network sees
full batches under load. Uploads are read into memory only, up to a size limit,
and parsed without temporary files; no path from the client is ever used.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from features.errors import UserInputError
from features.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

# -- the model ----------------------------------------------------------------------------------

@dataclass
class ServedModel:
    """A loaded classifier of either kind, behind one interface."""

    name: str
    input_size: int
    label_names: list[str]
    scores_are_probabilities: bool
    info: dict[str, Any]
    _scores: Any = field(repr=False)

    def class_scores(self, images: np.ndarray) -> np.ndarray:
        """Scores (n, classes) of RGB uint8 images of shape (n, size, size, 3)."""
        return np.asarray(self._scores(images))

    def warm_up(self, max_batch: int) -> None:
        """Compile the network for every batch size the server will use (powers of two),
        so no request pays for a graph compilation."""
        size = 1
        while True:
            self.class_scores(np.zeros((size, self.input_size, self.input_size, 3), np.uint8))
            if size >= max_batch:
                break
            size = min(max_batch, size * 2)


def load_served_model(path: str | Path) -> ServedModel:
    """Load a joblib classifier (stage 2) or a ``.keras`` model (stage 3), with its sidecar."""
    from classifiers.persistence import read_sidecar
    from pipeline.finetune import KerasImageClassifier
    from pipeline.workflows import load_image_classifier

    path = Path(path)
    model = load_image_classifier(path)
    if isinstance(model, KerasImageClassifier):
        return ServedModel(path.stem, int(model.info["input_size"]), model.label_names_, True,
                           _public_info(model.info, path), model.class_scores_of_images)
    extractor = model.feature_extractor()  # built now, not on the first request
    names = [model.label_names_[c] for c in model.classes_]

    def scores(images):
        return model.class_scores(extractor(images))

    return ServedModel(path.stem, extractor.spec.input_size, names, model.has_predict_proba,
                       _public_info(read_sidecar(path), path), scores)


def _public_info(info: dict, path: Path) -> dict:
    keep = ("kind", "stage", "backbone", "classifier", "feature_spec", "label_names",
            "best_params", "metrics", "input_size", "created", "library_versions")
    out = {k: info[k] for k in keep if k in info}
    if isinstance(out.get("metrics"), dict):
        out["metrics"] = {k: v for k, v in out["metrics"].items()
                          if k in ("accuracy", "macro_f1", "rank1", "rank5", "n_samples")}
    out["model"] = path.name
    return out


# -- batching -----------------------------------------------------------------------------------

class MicroBatcher:
    """One worker thread that runs queued images through the model in shared batches.

    Parameters
    ----------
    model : ServedModel
    max_batch : int
        Most images per forward pass.
    max_wait : float
        Seconds the worker waits for more images once it has some.
    """

    def __init__(self, model: ServedModel, max_batch: int = 32, max_wait: float = 0.005):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tlearn-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: np.ndarray) -> Future:
        future: Future = Future()
        self._queue.put((images, future))
        return future

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            count = len(jobs[0][0])
            deadline = time.perf_counter() + self.max_wait
            while count < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    job = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                jobs.append(job)
                count += len(job[0])
            try:
                scores = self.model.class_scores(np.concatenate([j[0] for j in jobs]))
                start = 0
                for images, future in jobs:
                    future.set_result(scores[start:start + len(images)])
                    start += len(images)
            except Exception as exc:  # delivered to every waiting request
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)


# -- multipart, in memory -----------------------------------------------------------------------

class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """``(client file name, bytes)`` of every file part of a multipart/form-data body."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(400, "send the images as multipart/form-data (field 'files')")
    files: list[tuple[str, bytes]] = []
    part: dict = {}

    def on_part_begin():
        part.clear()
        part.update(headers={}, data=bytearray(), name=bytearray(), value=bytearray())

    def on_header_field(data, start, end):
        part["name"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        part["headers"][bytes(part["name"]).lower()] = bytes(part["value"])
        part["name"], part["value"] = bytearray(), bytearray()

    def on_part_data(data, start, end):
        part["data"] += data[start:end]

    def on_part_end():
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"filename" in options:
            name = options[b"filename"].decode("utf-8", "replace")
            files.append((Path(name.replace("\\", "/")).name or "upload", bytes(part["data"])))

    parser = MultipartParser(params[b"boundary"], callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:
        raise UploadError(400, f"malformed multipart body ({exc})") from exc
    return files


# -- the app ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeLimits:
    """Limits applied to every request."""

    max_upload_bytes: int = 20 * 2**20
    max_images: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS


def create_app(model: ServedModel, limits: ServeLimits | None = None, *, max_batch: int = 32):
    """The FastAPI application serving ``model``."""
    limits = limits or ServeLimits()
    model.warm_up(max_batch)
    batcher = MicroBatcher(model, max_batch=max_batch)
    app = FastAPI(title="tlearn", version="1",
                  description=f"Image classification with {model.name}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return UPLOAD_PAGE.replace("__MODEL__", model.name).replace(
            "__LIMITS__", json.dumps({"max_images": limits.max_images,
                                      "max_upload_bytes": limits.max_upload_bytes}))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model.name}

    @app.get("/model")
    def model_info() -> dict:
        return {**model.info, "name": model.name, "classes": model.label_names,
                "input_size": model.input_size,
                "scores": "probability" if model.scores_are_probabilities else "decision",
                "limits": {"max_upload_bytes": limits.max_upload_bytes,
                           "max_images": limits.max_images}}

    @app.post("/predict", response_model=None)
    async def predict(request: Request, top: int = Query(3, ge=1, le=1000)) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            body = await _read_limited(request, limits.max_upload_bytes)
            files = parse_multipart(body, request.headers.get("content-type", ""))
        except UploadError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        if not files:
            return JSONResponse({"detail": "no image in the request; send files in the "
                                           "multipart field 'files'"}, status_code=400)
        if len(files) > limits.max_images:
            return JSONResponse({"detail": f"{len(files)} images in one request; at most "
                                           f"{limits.max_images} are accepted"},
                                status_code=400)
        images, errors = [], []
        for name, data in files:
            try:
                images.append(decode_image(data, model.input_size, name=name,
                                           max_pixels=limits.max_pixels))
            except ImageDecodeError as exc:
                errors.append({"filename": name, "error": exc.reason})
        if errors:
            return JSONResponse({"detail": f"{len(errors)} of {len(files)} files are not "
                                           "usable images", "errors": errors}, status_code=400)
        scores = await asyncio.wrap_future(batcher.submit(np.stack(images)))
        elapsed_ms = 1000 * (time.perf_counter() - t0)
        results = []
        for (name, _), row in zip(files, scores, strict=True):
            order = np.argsort(row)[::-1][:top]
            results.append({
                "filename": name, "label": model.label_names[order[0]],
                "score": float(row[order[0]]),
                "top": [{"label": model.label_names[j], "score": float(row[j])}
                        for j in order]})
        return JSONResponse({"results": results, "ms": elapsed_ms,
                             "scores": "probability" if model.scores_are_probabilities
                             else "decision"})

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"upload of {int(declared):,} bytes exceeds the limit of "
                               f"{limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"upload exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_serve_args(model_path: str | Path, port: int) -> None:
    """Cheap checks before the model is loaded, so mistakes fail at once."""
    path = Path(model_path)
    if not 0 < port < 65536:
        raise UserInputError(f"--port must be between 1 and 65535, got {port}")
    if not path.is_file():
        raise UserInputError(f"model {path} does not exist; train one with 'tlearn train'")
    if path.suffix not in (".joblib", ".keras"):
        raise UserInputError(f"{path} is neither a .joblib classifier nor a .keras model")


def serve(model_path: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits | None = None, log_level: str = "info") -> None:
    """Load ``model_path`` once and serve it with uvicorn until interrupted."""
    import uvicorn

    check_serve_args(model_path, port)
    app = create_app(load_served_model(model_path), limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


UPLOAD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tlearn: __MODEL__</title>
<style>
 body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
 #drop{border:2px dashed #888;border-radius:8px;padding:2rem;text-align:center;cursor:pointer}
 #drop.over{background:#eef5ff;border-color:#36c}
 .card{display:flex;gap:1rem;margin:1rem 0;padding:1rem;border:1px solid #ddd;border-radius:8px}
 .card img{width:160px;height:160px;object-fit:cover;border-radius:4px}
 .label{font-size:1.3rem;font-weight:600;margin-bottom:.5rem}
 .row{display:flex;align-items:center;gap:.5rem;margin:.15rem 0;font-size:.9rem}
 .row span:first-child{width:9rem;overflow:hidden;text-overflow:ellipsis}
 .bar{height:.8rem;background:#36c;border-radius:3px}
 .error{color:#b00}
 .visually-hidden{position:absolute;width:1px;height:1px;opacity:0;overflow:hidden}
</style></head><body>
<h1>tlearn</h1>
<p>Model <code>__MODEL__</code>. Choose or drop images to classify them.</p>
<div id="drop">Drop images here, or <label><u>choose files</u>
 <input id="files" class="visually-hidden" type="file" accept="image/*" multiple></label>
</div>
<p id="status"></p><div id="results"></div>
<script>
const limits = __LIMITS__;
const drop = document.getElementById("drop"), input = document.getElementById("files");
const statusLine = document.getElementById("status"), out = document.getElementById("results");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
  send([...e.dataTransfer.files]); });
input.addEventListener("change", () => send([...input.files]));
function el(tag, cls, text) { const n = document.createElement(tag);
  if (cls) n.className = cls; if (text !== undefined) n.textContent = text; return n; }
async function send(files) {
  if (!files.length) return;
  if (files.length > limits.max_images) {
    statusLine.textContent = `At most ${limits.max_images} images at a time.`; return; }
  const form = new FormData(); files.forEach(f => form.append("files", f, f.name));
  statusLine.textContent = "Classifying " + files.length + " image(s)...";
  const info = await (await fetch("model")).json();
  const response = await fetch("predict?top=" + info.classes.length,
                               {method: "POST", body: form});
  const data = await response.json();
  out.innerHTML = "";
  if (!response.ok) {
    statusLine.textContent = data.detail;
    (data.errors || []).forEach(
      e => out.appendChild(el("p", "error", e.filename + ": " + e.error)));
    return; }
  statusLine.textContent = `Done in ${data.ms.toFixed(0)} ms.`;
  data.results.forEach((r, i) => {
    const card = el("div", "card"); const img = el("img");
    img.src = URL.createObjectURL(files[i]); img.alt = r.filename; card.appendChild(img);
    const right = el("div"); right.appendChild(el("div", "label", r.label));
    right.lastChild.setAttribute("data-testid", "label");
    const scores = r.top.map(t => t.score), lo = Math.min(...scores), hi = Math.max(...scores);
    r.top.forEach(t => {
      const share = data.scores === "probability" ? t.score
                  : (hi > lo ? (t.score - lo) / (hi - lo) : 1);
      const row = el("div", "row"); row.appendChild(el("span", "", t.label));
      const bar = el("span", "bar"); bar.style.width = (share * 15).toFixed(2) + "rem";
      row.appendChild(bar); row.appendChild(el("span", "", t.score.toFixed(3)));
      right.appendChild(row); });
    card.appendChild(right); out.appendChild(card); });
}
</script></body></html>
"""
