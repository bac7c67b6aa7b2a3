import os
from pathlib import Path

import pytest

from features.integrity import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    file_digest,
    settings_key,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"original")

    def write(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, write)
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_suffix_is_kept_for_writers_that_need_it(tmp_path):
    seen = []
    atomic_write(tmp_path / "m.keras", lambda tmp: (seen.append(tmp), Path(tmp).write_text("x")),
                 suffix=".keras")
    assert seen[0].endswith(".keras")


def test_settings_key_is_order_independent_and_sensitive():
    assert settings_key({"a": 1, "b": [1, 2]}) == settings_key({"b": [1, 2], "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 2})


def test_file_digest(tmp_path):
    path = tmp_path / "f"
    atomic_write_json(path, {"x": 1})
    assert file_digest(path) == file_digest(path, "sha256")
    assert len(file_digest(path, "md5")) == 32


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_new_files_get_the_umask_mode_not_a_private_temporary_mode(tmp_path):
    # A report or model others on the machine (or a web server) should read, as with open().
    target = atomic_write_text(tmp_path / "index.html", "<html></html>")
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    target.chmod(0o640)
    atomic_write_json(target, {"accuracy": 1.0})
    assert target.stat().st_mode & 0o777 == 0o640
