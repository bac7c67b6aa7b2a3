"""Serve a trained model over HTTP: a JSON API and a self-contained upload page.

The model (and its backbone) is loaded once. Images from concurrent requests go
through one :class:`MicroBatcher` thread, which runs them through the network in
shared batches: no two requests touch the model at once, and the network sees
full batches under load. Uploads are read into memory only, up to a size limit,
and parsed without temporary files; no path from the client is ever used.

Hostile clients are bounded on every axis (see :class:`ServeLimits`): a few uploads
are read and decoded at once (the rest wait, holding no body), a request's headers
and body must arrive within a deadline, and each request may decode only so many
pixels, counted from the image headers before any pixel is decoded.

Off loopback the server needs a token (:func:`check_exposure`): every path but the
page and ``/health`` then answers 401 unless the request carries
``Authorization: Bearer <token>`` (:class:`BearerToken`), checked before any body is read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect

from features.errors import UserInputError
from features.images import ImageDecodeError, decode_image
from pipeline.image_classifiers import ImageClassifier, load_image_classifier
from pipeline.templates import read_template

# -- the model ----------------------------------------------------------------------------------

# -- batching -----------------------------------------------------------------------------------

class Overloaded(Exception):
    """The batcher's queue is full: the request is refused (503) rather than left waiting."""


class MicroBatcher:
    """One worker thread that runs queued images through the model in shared batches.

    The queue is bounded (in images): when it is full, :meth:`submit` raises
    :class:`Overloaded` at once, so latency stays bounded under overload and the
    server answers 503 instead of piling up work it cannot finish in time.

    Parameters
    ----------
    model : ImageClassifier
    max_batch : int
        Most images per forward pass.
    max_wait : float
        Seconds the worker waits for more images once it has some.
    max_queued : int
        Most images waiting at once.
    batching : bool
        Merge queued requests into shared forward passes (False: one request per pass,
        to measure what batching buys).
    """

    def __init__(self, model: ImageClassifier, max_batch: int = 32, max_wait: float = 0.005,
                 max_queued: int = 256, batching: bool = True):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait
        self.max_queued, self.batching = max_queued, batching
        self._queue: queue.Queue = queue.Queue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tlearn-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_images(self) -> int:
        return self._queued

    def submit(self, images: np.ndarray) -> Future:
        """Queue ``images``; their scores arrive in the returned future.

        Raises
        ------
        Overloaded
            When the queue already holds ``max_queued`` images.
        """
        with self._lock:
            if self._queued and self._queued + len(images) > self.max_queued:
                raise Overloaded(f"{self._queued} images are already waiting")
            self._queued += len(images)
        future: Future = Future()
        self._queue.put((images, future))
        return future

    def _take_more(self, jobs: list, count: int) -> None:
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

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            if self.batching:
                self._take_more(jobs, len(jobs[0][0]))
            n = sum(len(j[0]) for j in jobs)
            try:
                scores = self.model.scores(np.concatenate([j[0] for j in jobs]))
                start = 0
                for images, future in jobs:
                    future.set_result(scores[start:start + len(images)])
                    start += len(images)
            except Exception as exc:  # delivered to every waiting request
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._queued -= n


# -- multipart, streamed ------------------------------------------------------------------------

class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MultipartFiles:
    """Collect the file parts of a multipart/form-data body fed chunk by chunk.

    Each chunk goes straight to the parser as it arrives (nothing buffers the
    whole body); a file's bytes are kept once, in its own buffer. Too many files
    or too many bytes stop the upload at the first chunk that crosses a limit.

    Parameters
    ----------
    content_type : str
        The request's Content-Type header (with its boundary).
    max_files : int
        Most file parts accepted.
    max_bytes : int
        Most body bytes accepted.
    """

    def __init__(self, content_type: str, *, max_files: int, max_bytes: int) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._parse_options_header = parse_options_header
        ctype, params = parse_options_header(content_type or "")
        if ctype != b"multipart/form-data" or b"boundary" not in params:
            raise UploadError(400, "send the images as multipart/form-data (field 'files')")
        self.max_files, self.max_bytes = max_files, max_bytes
        self.files: list[tuple[str, bytearray]] = []
        self.received = 0
        self._part: dict = {}
        try:
            self._parser = MultipartParser(params[b"boundary"], callbacks={
                "on_part_begin": self._begin, "on_header_field": self._field,
                "on_header_value": self._value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._end})
        except Exception as exc:  # e.g. a boundary over the parser's 256 characters
            raise UploadError(400, f"malformed multipart header ({exc})") from exc

    def _begin(self) -> None:
        self._part = {"headers": {}, "name": bytearray(), "value": bytearray(), "file": None}

    def _field(self, data, start, end) -> None:
        self._part["name"] += data[start:end]

    def _value(self, data, start, end) -> None:
        self._part["value"] += data[start:end]

    def _header_end(self) -> None:
        part = self._part
        part["headers"][bytes(part["name"]).lower()] = bytes(part["value"])
        part["name"], part["value"] = bytearray(), bytearray()

    def _headers_done(self) -> None:
        disposition = self._part["headers"].get(b"content-disposition", b"")
        _, options = self._parse_options_header(disposition)
        if b"filename" not in options:
            return  # a plain form field: ignored
        if len(self.files) >= self.max_files:
            raise UploadError(400, f"more than {self.max_files} images in one request; at "
                                   f"most {self.max_files} are accepted")
        name = options[b"filename"].decode("utf-8", "replace")
        buffer = bytearray()
        # Only the base name, for display: a client's path is never used as a path.
        self.files.append((Path(name.replace("\\", "/")).name or "upload", buffer))
        self._part["file"] = buffer

    def _data(self, data, start, end) -> None:
        if self._part.get("file") is not None:
            self._part["file"] += data[start:end]

    def _end(self) -> None:
        self._part = {}

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body."""
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise UploadError(413, f"upload exceeds the limit of {self.max_bytes:,} bytes")
        try:
            self._parser.write(chunk)
        except UploadError:
            raise
        except Exception as exc:
            raise UploadError(400, f"malformed multipart body ({exc})") from exc

    def finish(self) -> list[tuple[str, bytearray]]:
        """``(client file name, bytes)`` of every file part, once the body has ended."""
        try:
            self._parser.finalize()
        except Exception as exc:
            raise UploadError(400, f"malformed multipart body ({exc})") from exc
        return self.files


def parse_multipart(body: bytes, content_type: str, *, max_files: int = 1 << 30,
                    max_bytes: int = 1 << 62) -> list[tuple[str, bytearray]]:
    """``(client file name, bytes)`` of every file part of a whole multipart body."""
    parts = MultipartFiles(content_type, max_files=max_files, max_bytes=max_bytes)
    parts.feed(body)
    return parts.finish()


def decode_uploads(files: list[tuple[str, bytearray]], size: int, max_pixels: int,
                   budget: int | None = None, heavy: threading.Semaphore | None = None
                   ) -> tuple[list[tuple[int, np.ndarray]], list[dict]]:
    """Decode uploaded images (in a worker thread, off the event loop).

    ``budget`` caps the pixels decoded for the whole request, counted from each
    image's header (after JPEG's reduced-scale draft) before it is decoded: an
    image that would overspend it is refused undecoded, so a request of huge
    images costs header reads, not seconds of CPU. An image of over
    :data:`HEAVY_DECODE_PIXELS` decodes only while it holds ``heavy``: large
    decodes take turns, small ones never wait behind them.

    Returns ``(index in files, pixels)`` of every usable image and one
    ``{"index", "filename", "error"}`` for each refused one.
    """
    images, errors = [], []
    left = math.inf if budget is None else budget
    holding = False

    def charge(width: int, height: int) -> None:
        nonlocal left, holding
        if width * height > left:
            raise ImageDecodeError(name, (
                f"refused: decoding {width}x{height} pixels would exceed this request's "
                f"budget of {budget:,} decoded pixels; send large images in separate "
                "requests or smaller"))
        left -= width * height
        if heavy is not None and width * height > HEAVY_DECODE_PIXELS:
            heavy.acquire()
            holding = True

    for index, (name, data) in enumerate(files):
        try:
            images.append((index, decode_image(data, size, name=name, max_pixels=max_pixels,
                                               on_size=charge)))
        except ImageDecodeError as exc:
            errors.append({"index": index, "filename": name, "error": exc.reason})
        finally:
            if holding:
                heavy.release()
                holding = False
    return images, errors


# -- access token -------------------------------------------------------------------------------

TOKEN_MIN_CHARS = 16
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
# Reachable without the token: the page (it asks for the token itself) and the health check.
OPEN_PATHS = frozenset({"/", "/health"})
_TOKEN_FILE_MAX_BYTES = 4096


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``.

    Any other name counts as reachable from elsewhere: it may resolve to any interface.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return (mapped or address).is_loopback


def check_token(token: str, source: str) -> str:
    """``token`` when it can serve as a bearer token; else one error naming ``source``."""
    make = f"make one with {MAKE_TOKEN}"
    if not token:
        raise UserInputError(f"{source} is empty; {make}")
    if len(token) < TOKEN_MIN_CHARS:
        raise UserInputError(f"the token in {source} has {len(token)} characters, fewer than "
                             f"{TOKEN_MIN_CHARS}: too easy to guess; {make}")
    # What an HTTP header carries as is: printable ASCII, no spaces.
    if not all("!" <= c <= "~" for c in token):
        raise UserInputError(f"the token in {source} holds spaces or characters outside "
                             f"printable ASCII, which an Authorization header cannot carry; "
                             f"{make}")
    return token


def read_token_file(path: str | Path) -> str:
    """The token in the file ``path``, read once, surrounding whitespace stripped.

    Refused, like ssh refuses a private key, when the file's permissions admit its group
    or other users (on POSIX systems): ``chmod 600`` it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(_TOKEN_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise UserInputError(f"cannot read the token file {path}: {exc.strerror}; give a "
                             f"readable file holding one token, made e.g. with {MAKE_TOKEN}"
                             ) from exc
    if os.name == "posix" and mode & 0o077:
        raise UserInputError(f"the token file {path} is accessible by other users (permissions "
                             f"{mode & 0o777:04o}); run chmod 600 {path}")
    if len(data) > _TOKEN_FILE_MAX_BYTES:
        raise UserInputError(f"the token file {path} is over {_TOKEN_FILE_MAX_BYTES} bytes: "
                             "not a token; give a file holding one token")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")  # check_token names the problem
    return check_token(text.strip(), f"the token file {path}")


def token_from(token_file: str | Path | None, environ: dict | None = None) -> str | None:
    """The token given by ``TLEARN_TOKEN`` or ``token_file`` (checked), None when neither is."""
    environ = os.environ if environ is None else environ
    variable = environ.get("TLEARN_TOKEN")
    if variable is not None and token_file is not None:
        raise UserInputError("both TLEARN_TOKEN and --token-file give a token; keep one of "
                             "them")
    if token_file is not None:
        return read_token_file(token_file)
    if variable is not None:
        return check_token(variable.strip(), "TLEARN_TOKEN")
    return None


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve on an address other than loopback without a token."""
    if token is None and not is_loopback(host):
        raise UserInputError(
            f"refusing to serve on {host or 'all addresses'} without a token: anyone who can "
            "reach it could use the model; set TLEARN_TOKEN or pass --token-file FILE "
            f"(token= from Python) with a token made by {MAKE_TOKEN} (chmod 600 the file), "
            "or serve on 127.0.0.1")


class BearerToken:
    """ASGI middleware: every path but :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``.

    A plain ASGI layer (not Starlette's ``BaseHTTPMiddleware``): it costs one header scan
    and one constant-time comparison per request, and refuses before any body is read, so
    a client without the token holds no upload slot. Paths are refused by default, so a
    route added later (the OpenAPI JSON, /docs, /redoc among them) is never left open.
    """

    def __init__(self, app, token: str) -> None:
        self.app = app
        self._token = token.encode("ascii")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == b"authorization"),
                     None)
        if given is None:
            challenge, detail = 'Bearer realm="tlearn"', (
                "this server needs its token: send the header Authorization: Bearer <token>")
        else:
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(),
                                                                   self._token):
                return await self.app(scope, receive, send)
            challenge, detail = ('Bearer realm="tlearn", error="invalid_token"',
                                 "the token was refused")
        response = _refusal(401, detail, {"WWW-Authenticate": challenge})
        await response(scope, receive, send)


# -- the app ------------------------------------------------------------------------------------

# Uploads are phone photos and scans, not gigapixel mosaics: 50 megapixels admits a
# 48-megapixel phone photo and keeps one decode under about 150 MB of RGB pixels.
SERVE_MAX_PIXELS = 50_000_000
# A JPEG decodes at a reduced scale (a 48-megapixel photo costs under a megapixel), so
# this budget admits 16 phone photos or a 300 dpi A4 scan per request, while a
# 49-megapixel PNG (over a second of CPU) is refused before it is decoded.
SERVE_MAX_REQUEST_PIXELS = 24_000_000
# Images decoding more pixels than this (a 4-megapixel PNG: tens of milliseconds and
# up) take turns (``decode_workers`` at once); smaller ones decode at once.
HEAVY_DECODE_PIXELS = 4_000_000


@dataclass(frozen=True)
class ServeLimits:
    """Limits applied to every request.

    Attributes
    ----------
    max_upload_bytes : int
        Largest request body (413 beyond).
    max_images : int
        Most images per request.
    max_pixels : int
        Largest image accepted (width x height), a defence against decompression bombs.
    max_request_pixels : int
        Most pixels decoded for one request (after JPEG's reduced-scale decoding);
        images beyond are refused undecoded and listed with the reason.
    max_queued : int
        Most images waiting for the model; beyond, requests get 503 with Retry-After.
    decode_workers : int
        Large images (over :data:`HEAVY_DECODE_PIXELS`) decoded at once. Every admitted
        upload has its own decoding thread (off the event loop, so /health stays
        responsive), so a small image never waits behind large ones.
    max_uploads : int
        Uploads read and decoded at once; the others wait for a slot holding no body,
        so upload memory stays under about ``max_uploads * max_upload_bytes``.
    body_timeout : float
        Seconds a request's headers, and then its body (slot wait included), may take
        to arrive; slower connections are closed (a body gets 408 first).
    max_connections : int
        Open connections; beyond, new requests get 503 at once (uvicorn's limit).
    """

    max_upload_bytes: int = 20 * 2**20
    max_images: int = 16
    max_pixels: int = SERVE_MAX_PIXELS
    max_request_pixels: int = SERVE_MAX_REQUEST_PIXELS
    max_queued: int = 256
    decode_workers: int = 2
    max_uploads: int = 8
    body_timeout: float = 30.0
    max_connections: int = 512


def create_app(model: ImageClassifier, limits: ServeLimits | None = None, *,
               max_batch: int = 32, batching: bool = True, token: str | None = None):
    """The FastAPI application serving ``model``.

    With a ``token``, every path but the page and ``/health`` needs
    ``Authorization: Bearer <token>`` (see :class:`BearerToken`).
    """
    from concurrent.futures import ThreadPoolExecutor

    limits = limits or ServeLimits()
    if token is not None:
        check_token(token, "the token= argument")
    model.warm_up(max_batch)
    batcher = MicroBatcher(model, max_batch=max_batch, max_queued=limits.max_queued,
                           batching=batching)
    # One thread per upload slot: an admitted upload never queues for a thread.
    decoders = ThreadPoolExecutor(max_workers=limits.max_uploads,
                                  thread_name_prefix="tlearn-upload-decode")
    heavy = threading.Semaphore(limits.decode_workers)
    uploads = asyncio.Semaphore(limits.max_uploads)
    app = FastAPI(title="tlearn", version="1",
                  description=f"Image classification with {model.name}")
    page_html, page_policy = upload_page(model.name, limits, token_required=token is not None)
    if token is not None:
        app.add_middleware(BearerToken, token=token)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(page_html, headers={"Content-Security-Policy": page_policy,
                                                "X-Content-Type-Options": "nosniff"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model.name, "queued_images": batcher.queued_images}

    @app.get("/model")
    def model_info() -> dict:
        return {**model.info, "name": model.name, "classes": model.label_names,
                "input_size": model.input_size,
                "scores": "probability" if model.scores_are_probabilities else "decision",
                "limits": {"max_upload_bytes": limits.max_upload_bytes,
                           "max_images": limits.max_images, "max_pixels": limits.max_pixels,
                           "max_request_pixels": limits.max_request_pixels}}

    @app.post("/predict", response_model=None)
    async def predict(request: Request, top: int = Query(3, ge=1, le=1000)) -> JSONResponse:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_timeout
        try:
            async with asyncio.timeout_at(deadline):
                await uploads.acquire()
        except TimeoutError:
            return _refusal(503, f"{limits.max_uploads} uploads are already in progress; "
                                 "retry shortly", {"Retry-After": "1"})
        try:
            # The slot is held through decoding: the bodies are freed only after it.
            try:
                async with asyncio.timeout_at(deadline):
                    files = await _read_files(request, limits)
            except TimeoutError:
                return _refusal(408, f"the upload did not arrive within "
                                     f"{limits.body_timeout:g} s")
            except ClientDisconnect:
                log.info("client %s left before its upload ended", _client(request))
                return _refusal(400, "the client disconnected during the upload")
            except UploadError as exc:
                return _refusal(exc.status, str(exc))
            if not files:
                return JSONResponse({"detail": "no image in the request; send files in the "
                                               "multipart field 'files'"}, status_code=400)
            names = [name for name, _ in files]
            decoded, errors = await loop.run_in_executor(
                decoders, decode_uploads, files, model.input_size, limits.max_pixels,
                limits.max_request_pixels, heavy)
            del files
        finally:
            uploads.release()
        if not decoded:
            return JSONResponse({"detail": f"none of the {len(names)} files is a usable "
                                           "image", "errors": errors}, status_code=400)
        try:
            future = batcher.submit(np.stack([pixels for _, pixels in decoded]))
        except Overloaded as exc:
            return JSONResponse({"detail": f"the server is busy ({exc}); retry shortly"},
                                status_code=503, headers={"Retry-After": "1"})
        scores = await asyncio.wrap_future(future)
        elapsed_ms = 1000 * (time.perf_counter() - t0)
        results = []
        for (index, _), row in zip(decoded, scores, strict=True):
            verdict = model.verdict(row, top)
            results.append({
                "index": index, "filename": names[index], **verdict,
                "top": [{"label": label, "score": score} for label, score in verdict["top"]]})
        return JSONResponse({"results": results, "errors": errors, "ms": elapsed_ms,
                             "scores": "probability" if model.scores_are_probabilities
                             else "decision"})

    return app


log = logging.getLogger("uvicorn.error")


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "client"


def _refusal(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    # The body may be unread: closing stops a client from trickling the rest of it.
    return JSONResponse({"detail": detail}, status_code=status,
                        headers={"Connection": "close", **(headers or {})})


def upload_page(model_name: str, limits: ServeLimits, *, token_required: bool = False
                ) -> tuple[str, str]:
    """The upload page for ``model_name`` and its Content-Security-Policy.

    ``token_required``: the page asks for the server's token and sends it with each request.

    The policy admits only this page's own inline script and style (by hash), its
    thumbnails (``blob:``) and requests to this server: even a name that slipped
    past the escaping could not run a script or send data elsewhere.
    """
    page = read_template("serve_page.html").replace("__MODEL__", html.escape(model_name)).replace(
        "__LIMITS__", json.dumps({"max_images": limits.max_images,
                                  "max_upload_bytes": limits.max_upload_bytes,
                                  "token": token_required}))

    def digest(tag: str) -> str:
        body = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    policy = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
              "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    return page, policy


async def _read_files(request: Request, limits: ServeLimits) -> list[tuple[str, bytearray]]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
        raise UploadError(413, f"upload of {int(declared):,} bytes exceeds the limit of "
                               f"{limits.max_upload_bytes:,} bytes")
    parts = MultipartFiles(request.headers.get("content-type", ""),
                           max_files=limits.max_images, max_bytes=limits.max_upload_bytes)
    async for chunk in request.stream():
        parts.feed(chunk)
    return parts.finish()


def request_deadline_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers take over ``timeout`` s.

    uvicorn times out only idle keep-alive connections after a response; a client that
    opens a socket and sends nothing, or its headers a byte at a time, would hold it
    for ever. Each connection, and each request after a response, gets a deadline
    for its headers; the body's deadline is the application's (``body_timeout``).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class RequestDeadlineH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(timeout, self._expire, self.cycle)

        def _expire(self, cycle) -> None:
            if self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()  # no new request arrived in time

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            self._arm()  # before: a pipelined request started by super() disarms it
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return RequestDeadlineH11


def server_config(app, limits: ServeLimits | None = None, *, host: str = "127.0.0.1",
                  port: int = 8000, log_level: str = "info"):
    """The ``uvicorn.Config`` that :func:`serve` runs ``app`` with."""
    import uvicorn

    limits = limits or ServeLimits()
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=request_deadline_protocol(limits.body_timeout),
                          limit_concurrency=limits.max_connections, timeout_keep_alive=5)


def check_limit(option: str, value: float, low: float, high: float) -> float:
    """``value`` when ``low < value <= high``; else one error naming the option and the range."""
    if not (math.isfinite(value) and low < value <= high):
        raise UserInputError(f"{option} must be a number above {low:g} and at most {high:g}, "
                             f"got {value}")
    return value


def check_serve_args(model_path: str | Path, port: int, *, host: str = "127.0.0.1",
                     token: str | None = None) -> None:
    """Cheap checks before the model is loaded, so mistakes fail at once."""
    path = Path(model_path)
    if not 0 < port < 65536:
        raise UserInputError(f"--port must be between 1 and 65535, got {port}")
    check_exposure(host, token)
    if not path.is_file():
        raise UserInputError(f"model {path} does not exist; train one with 'tlearn train'")
    if path.suffix not in (".joblib", ".keras"):
        raise UserInputError(f"{path} is neither a .joblib classifier nor a .keras model")


def serve(model_path: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits | None = None, batching: bool = True,
          log_level: str = "info", runtime: str | None = None,
          token: str | None = None) -> None:
    """Load ``model_path`` once and serve it with uvicorn until interrupted.

    ``runtime`` runs the network (see :func:`pipeline.image_classifiers.load_image_classifier`);
    ``GET /model`` says which runtime and precision answer. A ``host`` other than loopback
    needs a ``token`` (see :func:`check_exposure`); with one, requests must carry it.
    """
    import uvicorn

    check_serve_args(model_path, port, host=host, token=token)
    app = create_app(load_image_classifier(model_path, runtime=runtime), limits,
                     batching=batching, token=token)
    uvicorn.Server(server_config(app, limits, host=host, port=port,
                                 log_level=log_level)).run()
