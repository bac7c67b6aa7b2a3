"""Read PyTorch legacy-format checkpoints (``.pth``) into numpy arrays, without torch.

The pre-zip serialization of ``torch.save`` writes five things in a row: three
small pickles (magic number, protocol version, system info), the pickled object
whose tensors refer to storages by *persistent id*, and finally the list of
storage keys followed by each storage's raw little-endian bytes.

Only the handful of globals a state dict needs are resolved; anything else is
refused, so reading a checkpoint cannot run arbitrary code the way a plain
``pickle.load`` (or ``torch.load`` with ``weights_only=False``) could.

Every number the file supplies (storage sizes, tensor offsets, sizes and strides)
is checked against the bytes actually present before a numpy view is made: a
strided view past the end of its buffer reads foreign memory, so a crafted file
could otherwise crash the process instead of being reported.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from features.errors import UserInputError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"
# numpy 1.x refuses more dimensions than this; no real weight tensor comes close
_MAX_RANK = 32

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


class _MalformedCheckpoint(Exception):
    """The file breaks the legacy format; the message says how."""


def _malformed(reason: str) -> NoReturn:
    raise _MalformedCheckpoint(reason)


class _Sealed:
    """Base of the stand-ins: refuses pickle's BUILD, which would overwrite checked fields."""

    def __setstate__(self, state: Any) -> None:
        _malformed(f"refusing to set the state of a {type(self).__name__.lstrip('_')}")


@dataclass(eq=False)
class _StorageType(_Sealed):
    name: str
    dtype: np.dtype


@dataclass(eq=False)
class _Storage(_Sealed):
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(eq=False)
class _TensorRef(_Sealed):
    """A tensor whose offset, size and stride were checked against its storage's numel."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None or data.shape != (self.storage.numel,):
            _malformed(f"storage {self.storage.key} has no data in the file")
        if 0 in self.size:
            return np.empty(self.size, dtype=data.dtype)
        itemsize = data.dtype.itemsize
        # the stride of a dimension of size 0 or 1 is never followed; torch leaves
        # arbitrary values there, so they must not reach numpy's byte arithmetic
        strides = tuple(s * itemsize if n > 1 else 0
                        for n, s in zip(self.size, self.stride, strict=True))
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=strides, writeable=False)
        return np.array(view, copy=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(_is_int(v) for v in value):
        _malformed(f"tensor {what} {value!r} is not a tuple of integers")
    if any(v < 0 for v in value):
        _malformed(f"tensor {what} {tuple(value)} has a negative entry")
    return tuple(value)


def _checked_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> _TensorRef:
    """A tensor view that provably stays inside its storage, or ``_MalformedCheckpoint``."""
    if not isinstance(storage, _Storage):
        _malformed(f"a tensor is built on a {type(storage).__name__}, not on a storage")
    if not _is_int(offset) or offset < 0:
        _malformed(f"tensor offset {offset!r} is not a non-negative integer")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        _malformed(f"tensor size {size} and stride {stride} have different lengths")
    if len(size) > _MAX_RANK:
        _malformed(f"tensor has {len(size)} dimensions (at most {_MAX_RANK} are supported)")
    count = math.prod(size)
    if count == 0:
        if offset > storage.numel:
            _malformed(f"tensor offset {offset} is past the end of storage {storage.key} "
                       f"({storage.numel} elements)")
        return _TensorRef(storage, offset, size, stride)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.numel:
        _malformed(f"tensor of size {size}, stride {stride} at offset {offset} reaches "
                   f"element {last} of storage {storage.key}, which has {storage.numel}")
    # only overlapping views (stride 0 and the like) hold more elements than their
    # storage; a state dict never has them, and copying one could need unbounded memory
    if count > storage.numel:
        _malformed(f"tensor of size {size} repeats the {storage.numel} elements of "
                   f"storage {storage.key}")
    return _TensorRef(storage, offset, size, stride)


class _PlainUnpickler(pickle.Unpickler):
    """Built-in values only: the header pickles and the key list need no globals."""

    def find_class(self, module: str, name: str) -> Any:
        _malformed(f"refusing to load {module}.{name}: only tensors and dicts are allowed "
                   "in a checkpoint")

    def persistent_load(self, pid: Any) -> Any:
        _malformed("a storage reference outside the state dict")


class _StateDictUnpickler(_PlainUnpickler):
    def __init__(self, file: io.BytesIO, file_size: int) -> None:
        super().__init__(file)
        self.file_size = file_size
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        # bound methods, not module functions: BUILD cannot set attributes on them
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self.rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<"))
        if module == "torch" and name.endswith("Storage"):
            _malformed(f"unsupported storage class torch.{name} (supported: "
                       f"{', '.join(_STORAGE_DTYPES)})")
        return super().find_class(module, name)

    def rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                          requires_grad: Any = False, backward_hooks: Any = None,
                          metadata: Any = None) -> _TensorRef:
        return _checked_tensor(storage, storage_offset, size, stride)

    def rebuild_parameter(self, data: Any, requires_grad: Any = False,
                          backward_hooks: Any = None) -> _TensorRef:
        if not isinstance(data, _TensorRef):
            _malformed(f"a parameter wraps a {type(data).__name__}, not a tensor")
        return data

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            _malformed(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            _malformed(f"storage class {storage_type!r} is not a torch storage class")
        if not isinstance(key, str | int) or isinstance(key, bool):
            _malformed(f"storage key {key!r} is not a string")
        key = str(key)
        if not _is_int(numel) or numel < 0:
            _malformed(f"storage {key} has element count {numel!r}")
        if numel * storage_type.dtype.itemsize > self.file_size:
            _malformed(f"storage {key} claims {numel} elements, more than the whole file holds")
        if view_metadata is not None:
            _malformed(f"storage {key} is a view of another storage (format of torch < 0.4, "
                       "not supported)")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        elif (known.dtype, known.numel) != (storage_type.dtype, numel):
            _malformed(f"storage {key} is declared twice with different types or sizes")
        return known


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


def _read_storages(buffer: bytes, stream: io.BytesIO,
                   storages: dict[str, _Storage]) -> None:
    """Attach its bytes to every storage: count, then raw data, in the listed key order."""
    keys = _PlainUnpickler(stream).load()
    if not isinstance(keys, list) or not all(isinstance(k, str | int) for k in keys):
        _malformed("the storage key list is not a list of keys")
    keys = [str(k) for k in keys]
    if len(set(keys)) != len(keys):
        _malformed("a storage key is listed twice")
    if unused := sorted(set(keys) - set(storages)):
        _malformed(f"storage {unused[0]} is listed but no tensor uses it")
    if missing := sorted(set(storages) - set(keys)):
        _malformed(f"storage {missing[0]} is used by a tensor but has no data in the file")
    pos = stream.tell()
    for key in keys:
        storage = storages[key]
        if pos + 8 > len(buffer):
            _malformed(f"the file is truncated before storage {key}")
        count = int.from_bytes(buffer[pos:pos + 8], "little", signed=True)
        pos += 8
        if count != storage.numel:
            _malformed(f"storage {key} holds {count} elements but its tensors were saved "
                       f"with {storage.numel}")
        nbytes = count * storage.dtype.itemsize
        if nbytes > len(buffer) - pos:
            _malformed(f"the file is truncated: storage {key} needs {nbytes} bytes, "
                       f"{len(buffer) - pos} remain")
        storage.data = np.frombuffer(buffer, dtype=storage.dtype, count=count, offset=pos)
        pos += nbytes
    if pos != len(buffer):
        _malformed(f"{len(buffer) - pos} unexpected bytes after the last storage")


def _read(buffer: bytes) -> Any:
    stream = io.BytesIO(buffer)
    if _PlainUnpickler(stream).load() != _MAGIC_NUMBER:
        _malformed("bad magic number (not written by torch.save)")
    version = _PlainUnpickler(stream).load()
    if version != _PROTOCOL_VERSION:
        _malformed(f"unsupported protocol version {version!r}")
    system = _PlainUnpickler(stream).load()
    if not isinstance(system, dict) or system.get("little_endian", True) is not True:
        _malformed("written on a big-endian machine or without system information")
    unpickler = _StateDictUnpickler(stream, len(buffer))
    obj = unpickler.load()
    if not isinstance(obj, dict):
        _malformed(f"it holds a {type(obj).__name__}, not a dict of tensors")
    _read_storages(buffer, stream, unpickler.storages)
    return _materialize(obj)


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
        If the file is missing, is not a legacy PyTorch checkpoint, is truncated, or
        describes a tensor outside its storage.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist; pass the path of a .pth file")
    # the whole file in memory: every size it claims is checked against what is really
    # there, and the storages become zero-copy views of these bytes
    buffer = path.read_bytes()
    if buffer.startswith(_ZIP_SIGNATURE):
        raise UserInputError(
            f"{path} is a zip-format PyTorch checkpoint, which tlearn cannot read; re-save it "
            "with torch.save(obj, path, _use_new_zipfile_serialization=False)")
    try:
        return _read(buffer)
    # the pickle machinery reports garbage input with any of these
    except (_MalformedCheckpoint, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            KeyError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        raise UserInputError(
            f"{path} is not a valid PyTorch checkpoint: {exc}; pass a .pth saved by "
            "torch.save") from exc
