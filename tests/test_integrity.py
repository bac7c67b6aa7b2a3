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


@pytest.fixture
def umask_022(monkeypatch):
    import features.integrity

    old = os.umask(0o022)
    monkeypatch.setattr(features.integrity, "_UMASK", 0o022)
    yield
    os.umask(old)


def test_new_files_get_the_umask_mode_not_a_private_temporary_mode(tmp_path, umask_022):
    # A report or model others on the machine (or a web server) should read, as with open().
    target = atomic_write_text(tmp_path / "index.html", "<html></html>")
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("partial", [False, True])  # True: the visible <path>.partial
def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022, partial):
    target = tmp_path / "predictions.csv"
    target.write_text("old")
    target.chmod(0o640)

    def write(text):
        atomic_write(target, lambda tmp: Path(tmp).write_text(text), partial=partial)

    write("new")
    assert target.stat().st_mode & 0o777 == 0o640
    target.chmod(0o2640)  # but never a setgid bit, which open() would not give either
    write("newer")
    assert target.stat().st_mode & 0o7777 == 0o640


def test_the_umask_is_read_without_changing_it():
    from features.integrity import _UMASK, _read_umask

    before = os.umask(0o027)
    try:
        assert _read_umask() == 0o027
        assert os.umask(0o027) == 0o027  # reading it left it as it was
    finally:
        os.umask(before)
    assert 0 <= _UMASK <= 0o777
