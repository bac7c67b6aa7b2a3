"""Read PyTorch legacy-format checkpoints (``.pth``) into numpy arrays, without torch.

The pre-zip serialization of ``torch.save`` writes five things in a row: three
small pickles (magic number, protocol version, system info), the pickled object
whose tensors refer to storages by *persistent id*, and finally the list of
storage keys followed by each storage's raw little-endian bytes.

Only the handful of globals a state dict needs are resolved; anything else is
refused, so reading a checkpoint cannot run arbitrary code the way a plain
``pickle.load`` (or ``torch.load`` with ``weights_only=False``) could.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from features.errors import UserInputError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass
class _StorageType:
    dtype: Any


@dataclass
class _Storage:
    key: str
    dtype: Any
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: dict = field(default_factory=dict)

    def materialize(self) -> np.ndarray:
        if self.storage.data is None:
            raise ValueError(f"storage {self.storage.key!r} has no data in the checkpoint")
        base = self.storage.data[self.offset :]
        itemsize = base.dtype.itemsize
        strides = tuple(s * itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(base, shape=self.size, strides=strides)
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only tensors and dicts are allowed in a checkpoint"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def read_torch_legacy_checkpoint(path: str | Path) -> collections.OrderedDict:
    """Read a legacy-format PyTorch checkpoint into an ordered dict of numpy arrays.

    Parameters
    ----------
    path : str or Path
        A file written by ``torch.save(..., _use_new_zipfile_serialization=False)``.

    Returns
    -------
    collections.OrderedDict
        Parameter name to ``numpy.ndarray`` (a copy, writable), in file order.

    Raises
    ------
    UserInputError
        If the file is missing, is not a legacy PyTorch checkpoint, or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist")
    try:
        with path.open("rb") as f:
            magic = pickle.load(f)
            if magic != _MAGIC_NUMBER:
                raise UserInputError(
                    f"{path} is not a legacy-format PyTorch checkpoint (bad magic number)"
                )
            version = pickle.load(f)
            if version != _PROTOCOL_VERSION:
                raise UserInputError(f"{path}: unsupported PyTorch protocol version {version}")
            pickle.load(f)  # system info: endianness and type sizes, little-endian assumed
            unpickler = _StateDictUnpickler(f)
            obj = unpickler.load()
            keys = pickle.load(f)
            for key in keys:
                storage = unpickler.storages.get(str(key))
                (count,) = struct.unpack("<q", f.read(8))
                if storage is None:
                    f.seek(count * 4, 1)
                    continue
                nbytes = count * np.dtype(storage.dtype).itemsize
                raw = f.read(nbytes)
                if len(raw) != nbytes:
                    raise UserInputError(f"{path} is truncated (storage {key} is incomplete)")
                storage.data = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    except (pickle.UnpicklingError, EOFError, struct.error, AttributeError, ValueError) as exc:
        if isinstance(exc, UserInputError):
            raise
        raise UserInputError(f"{path} is not a readable PyTorch legacy checkpoint: {exc}") from exc
    return _materialize(obj)
