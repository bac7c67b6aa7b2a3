"""The real download code against a small archive served on 127.0.0.1 inside the test."""

import hashlib
import io
import tarfile
import threading
import typing
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from features.errors import UserInputError
from pipeline.downloads import download_file, safe_extract


class _Handler(BaseHTTPRequestHandler):
    files: typing.ClassVar[dict] = {}
    requests: typing.ClassVar[list] = []
    fail_after: int | None = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        self.requests.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.fail_after is not None:
            self.wfile.write(body[: self.fail_after])
            self.wfile.flush()
            self.connection.close()  # drop the connection mid-transfer
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files, _Handler.requests, _Handler.fail_after = {}, [], None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_verifies_checksum(tmp_path, server):
    base, handler = server
    payload = b"x" * 300_000
    handler.files["/a.bin"] = payload
    seen = []
    path = download_file(f"{base}/a.bin", tmp_path / "a.bin",
                         checksum=hashlib.sha256(payload).hexdigest(),
                         progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == payload
    assert seen[-1] == (300_000, 300_000)
    # already there and valid: nothing is requested again
    count = len(handler.requests)
    download_file(f"{base}/a.bin", tmp_path / "a.bin",
                  checksum=hashlib.sha256(payload).hexdigest())
    assert len(handler.requests) == count


def test_interrupted_download_resumes_with_range(tmp_path, server):
    base, handler = server
    payload = bytes(range(256)) * 2000
    handler.files["/big.bin"] = payload
    handler.fail_after = 100_000
    digest = hashlib.md5(payload).hexdigest()
    with pytest.raises(UserInputError, match="rerun"):
        download_file(f"{base}/big.bin", tmp_path / "big.bin", checksum=digest, algorithm="md5")
    part = tmp_path / "big.bin.part"
    assert part.exists() and not (tmp_path / "big.bin").exists()
    assert 0 < part.stat().st_size < len(payload)
    handler.fail_after = None
    download_file(f"{base}/big.bin", tmp_path / "big.bin", checksum=digest, algorithm="md5")
    assert (tmp_path / "big.bin").read_bytes() == payload
    assert handler.requests[-1][1] == f"bytes={part.stat().st_size if part.exists() else 100000}-"


def test_corrupt_download_leaves_nothing(tmp_path, server):
    base, handler = server
    handler.files["/c.bin"] = b"corrupted"
    with pytest.raises(UserInputError, match="corrupt"):
        download_file(f"{base}/c.bin", tmp_path / "c.bin", checksum="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_one_clear_line(tmp_path, server):
    base, _ = server
    with pytest.raises(UserInputError, match="HTTP 404"):
        download_file(f"{base}/missing", tmp_path / "m.bin", checksum="0" * 64)


def test_safe_extract_tar_and_zip(tmp_path):
    archive = tmp_path / "ok.tgz"
    archive.write_bytes(make_tar({"jpg/a.txt": b"a", "jpg/sub/b.txt": b"b"}))
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "jpg" / "sub" / "b.txt").read_bytes() == b"b"
    z = tmp_path / "ok.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("d/c.txt", "c")
    assert (safe_extract(z, tmp_path / "zout") / "d" / "c.txt").read_text() == "c"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "a/../../escape.txt"])
def test_safe_extract_refuses_escaping_members(tmp_path, name):
    archive = tmp_path / "bad.tgz"
    archive.write_bytes(make_tar({"fine.txt": b"ok", name: b"evil"}))
    with pytest.raises(UserInputError, match=r"refusing|escapes"):
        safe_extract(archive, tmp_path / "out" / "inner")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out" / "inner").exists()
    assert not (tmp_path / "out" / "inner.extracting").exists()


def test_safe_extract_refuses_links(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    archive = tmp_path / "link.tar"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(UserInputError, match="link"):
        safe_extract(archive, tmp_path / "out")


def test_unreachable_server_says_so_without_claiming_partial_data(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserInputError) as info:
        download_file(f"http://127.0.0.1:{port}/x.tgz", tmp_path / "x.tgz", checksum="0" * 64,
                      timeout=5)
    assert "check the network connection" in str(info.value)
    assert "partial data" not in str(info.value)
