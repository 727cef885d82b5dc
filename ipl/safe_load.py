"""Read torch checkpoints from untrusted sources without running code from them.

``torch.load(..., weights_only=True)`` refuses any pickle that names a
global outside its allow-list, which many published checkpoints do for
harmless reasons: PyTorch Lightning files key their callback states by
callback class (``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``),
keep hyper-parameters in an ``AttributeDict``, and so on.
:func:`load_untrusted` first tries that loader; when it refuses a global, it
reads the file with :class:`RestrictedUnpickler` instead, which

* resolves only torch's tensor, parameter and storage rebuild functions,
  storage types and dtypes, ``torch.Size``, ``torch.device``,
  ``collections.OrderedDict``, ``set`` / ``frozenset`` and the ``latin1``
  byte decoding of protocol-2 pickles, each to a small function of ours;
* turns every other global into a :class:`Placeholder` subclass named after
  it: nothing is imported, called or executed. Calling it, or building an
  instance from it, yields an inert placeholder object that records the
  arguments, the state and any dict or list items given to it (so a
  Lightning ``AttributeDict`` keeps its items), and does nothing else;
* takes each storage from its entry of the zip archive (memory-mapped,
  copy-on-write, when the entry is stored uncompressed and aligned, as
  ``torch.save`` writes them), with the record's dtype, element count and
  every tensor's offset, size and stride checked against the entry.

Only torch's zip format (``torch.save`` since PyTorch 1.6) can be read this
way. Files in the legacy format load only when ``weights_only`` accepts them.
Errors are :class:`SafeLoadError` with a message that names the file and
the problem; torch's advice to pass ``weights_only=False`` is never passed on.
"""

import collections
import io
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from stylegan2.utils import load_error_summary, refused_global

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch's legacy magic number, pickled
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_ZIP_LOCAL_HEADER_SIZE = 30


class SafeLoadError(Exception):
    """A checkpoint that cannot be read safely; the message says why."""


# ----------------------------------------------------------------------------
# Placeholders for refused globals


class Placeholder:
    """Stands in for an object of a refused global; it only records what the pickle gave it.

    Subclasses are made per global name (``global_name``), never imported.

    Attributes:
        global_name: Dotted name of the global (a class attribute).
        args, kwargs: Arguments the pickle called it with.
        state: What the pickle set as its state (``BUILD``), or None.
        items: ``{key: value}`` the pickle stored into it (dict subclasses).
        list_items: Values the pickle appended to it (list subclasses).
    """

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items, self.list_items = args, kwargs, None, {}, []
        return self

    def __init__(self, *args, **kwargs):
        pass  # __new__ recorded the arguments

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list_items.append(value)

    def extend(self, values):
        self.list_items.extend(values)

    def __repr__(self):
        return f"<placeholder for {self.global_name}>"


def is_placeholder(obj):
    """True for a placeholder object or a placeholder class."""
    return isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder))


def placeholder_names(obj):
    """Sorted dotted names of every placeholder (object or class) inside ``obj``."""
    names, seen, stack = set(), set(), [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if is_placeholder(item):
            names.add(item.global_name)
            if isinstance(item, Placeholder):
                stack.extend([item.args, item.kwargs, item.state, item.items, item.list_items])
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return sorted(names)


# ----------------------------------------------------------------------------
# The allowed globals, each replaced by a function of ours


class _StorageType:
    """A storage class named in a persistent id (``torch.FloatStorage``, ...): only its dtype matters."""

    def __init__(self, dtype):
        self.dtype = dtype


class _Storage:
    """A storage read from the archive: a flat tensor of ``numel`` elements of ``dtype``."""

    def __init__(self, flat):
        self.flat = flat

    @property
    def dtype(self):
        return self.flat.dtype


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex128", "complex64",
)


def _view(storage, storage_offset, size, stride):
    """A tensor over ``storage`` with a checked offset, size and stride."""
    if not isinstance(storage, _Storage):
        raise SafeLoadError(f"tensor record over a {type(storage).__name__}, expected a storage")
    try:
        size, stride, storage_offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    except (TypeError, ValueError):
        raise SafeLoadError("tensor record with a non-integer size, stride or offset") from None
    if len(size) != len(stride) or storage_offset < 0 or min(size + stride, default=0) < 0:
        raise SafeLoadError(f"invalid tensor record: offset {storage_offset}, size {size}, stride {stride}")
    available = storage.flat.numel()
    if all(size):
        end = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
        if end > available:
            raise SafeLoadError(f"a tensor record reads past its storage ({end} > {available} elements)")
    elif storage_offset > available:
        raise SafeLoadError(f"a tensor record starts past its storage ({storage_offset} > {available} elements)")
    flat = storage.flat
    return flat.as_strided(size, stride, flat.storage_offset() + storage_offset)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stands in for ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2`` (requires_grad, hooks and metadata dropped)."""
    return _view(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_ignored):
    """Stands in for ``torch._utils._rebuild_tensor_v3``: a byte storage viewed as ``dtype``."""
    if not isinstance(dtype, torch.dtype) or not isinstance(storage, _Storage):
        raise SafeLoadError("malformed tensor record (v3)")
    flat = storage.flat
    element = torch.empty((), dtype=dtype).element_size()
    if flat.dtype != torch.uint8 or flat.numel() % element or flat.storage_offset() % element:
        raise SafeLoadError(f"a byte storage of {flat.numel()} bytes cannot hold {dtype} elements")
    return _view(_Storage(flat.view(dtype)), storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, *_ignored):
    """Stands in for ``torch._utils._rebuild_parameter(_with_state)``: a Parameter, as torch's loader returns (hooks and state dropped)."""
    if not isinstance(data, torch.Tensor):
        raise SafeLoadError(f"parameter record holds a {type(data).__name__}, expected a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _size(*args):
    values = args[0] if len(args) == 1 else args
    if not all(isinstance(v, int) for v in values):
        raise SafeLoadError("torch.Size record with non-integer entries")
    return torch.Size(values)


def _device(*args):
    if not args or not isinstance(args[0], str) or not all(isinstance(a, int) for a in args[1:]):
        raise SafeLoadError("malformed torch.device record")
    return torch.device(*args)


def _latin1_bytes(text, encoding="latin1"):
    """Stands in for ``_codecs.encode``, which protocol-2 pickles use for ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise SafeLoadError("unexpected _codecs.encode record")
    return text.encode("latin1")


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): getattr(torch, name) for name in _DTYPE_NAMES},
}


# ----------------------------------------------------------------------------
# The restricted reader


class _Archive:
    """The entries of a torch zip checkpoint, storages read or memory-mapped on demand."""

    def __init__(self, path, zf, mmap):
        self.path = Path(path)
        self.zf = zf
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise SafeLoadError(f"{self.path}: a zip file but not a torch checkpoint (found {len(pickles)} '<name>/data.pkl' entries, expected 1)")
        self.prefix = pickles[0][: -len("data.pkl")]
        byteorder = self.prefix + "byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() not in (b"little", b""):
            raise SafeLoadError(f"{self.path}: written on a big-endian machine; only little-endian checkpoints are read")
        # One private (copy-on-write) mapping of the whole file; each storage is
        # a slice of it, so a tensor saved again carries its own bytes only.
        self._mapped = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=self.path.stat().st_size) if mmap else None
        self.storages = {}

    def pickle_bytes(self):
        return self.zf.read(self.prefix + "data.pkl")

    def _data_offset(self, info):
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(_ZIP_LOCAL_HEADER_SIZE)
        if len(header) != _ZIP_LOCAL_HEADER_SIZE:
            raise SafeLoadError(f"{self.path}: the zip entry {info.filename} is truncated")
        signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise SafeLoadError(f"{self.path}: corrupt zip entry {info.filename}")
        return info.header_offset + _ZIP_LOCAL_HEADER_SIZE + name_length + extra_length

    def storage(self, key, dtype, numel):
        if key in self.storages:
            return self.storages[key]
        name = f"{self.prefix}data/{key}"
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise SafeLoadError(f"{self.path}: the pickle names storage {key!r}, which the archive does not hold") from None
        element = torch.empty((), dtype=dtype).element_size()
        nbytes = numel * element
        if info.file_size < nbytes:
            raise SafeLoadError(
                f"{self.path}: storage {key!r} should hold {numel} x {dtype} ({nbytes} bytes), the archive entry has {info.file_size}"
            )
        flat = None
        if self._mapped is not None and info.compress_type == zipfile.ZIP_STORED:
            offset = self._data_offset(info)
            if offset % element == 0 and offset + nbytes <= self._mapped.nbytes():
                flat = torch.empty((0,), dtype=dtype).set_(self._mapped[offset : offset + nbytes])
        if flat is None:  # compressed or unaligned entry: read a copy
            data = bytearray(self.zf.read(name)[:nbytes])
            flat = torch.frombuffer(data, dtype=dtype) if nbytes else torch.empty((0,), dtype=dtype)
        storage = _Storage(flat)
        self.storages[key] = storage
        return storage


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip checkpoint with the allow-list and placeholders of this module.

    Every opcode that could reach code (GLOBAL, STACK_GLOBAL, INST, OBJ,
    EXT*) goes through :meth:`find_class`, which never imports: an allowed
    name maps to a function of this module, any other name to a new
    :class:`Placeholder` subclass. Storages come from :meth:`persistent_load`.
    """

    def __init__(self, file, archive):
        super().__init__(file)
        self.archive = archive
        self._placeholders = {}

    def find_class(self, module, name):
        target = _ALLOWED.get((module, name))
        if target is not None:
            return target
        dotted = f"{module}.{name}"
        if dotted not in self._placeholders:
            self._placeholders[dotted] = type(name, (Placeholder,), {"global_name": dotted, "__module__": __name__})
        return self._placeholders[dotted]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise SafeLoadError(f"unexpected persistent id in the pickle: {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise SafeLoadError(f"storage record of unknown type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise SafeLoadError(f"malformed storage record {str(pid)[:80]}")
        return self.archive.storage(key, storage_type.dtype, numel)


def _unwrap_storages(obj):
    """Storages that ended up as values (a pickled bare storage) become flat tensors."""
    if isinstance(obj, _Storage):
        return obj.flat
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, _Storage):
                obj[key] = value.flat
    return obj


def read_restricted(path, *, mmap=True):
    """Read a torch zip checkpoint with :class:`RestrictedUnpickler` (no ``weights_only`` attempt).

    Raises:
        SafeLoadError: not a torch zip checkpoint, or a malformed record.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            archive = _Archive(path, zf, mmap)
            data = archive.pickle_bytes()
            return _unwrap_storages(RestrictedUnpickler(io.BytesIO(data), archive).load())
    except SafeLoadError as e:
        if str(path) in str(e):
            raise
        raise SafeLoadError(f"{path}: {e}; the file is damaged or was not written by torch.save") from None
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError, RuntimeError, OSError) as e:
        raise SafeLoadError(f"{path}: cannot be read ({load_error_summary(e)}); the file is truncated or corrupt") from None


def load_untrusted(path, *, mmap=True):
    """Load a torch checkpoint from an untrusted source, executing nothing from it.

    ``torch.load(path, weights_only=True)`` first; if it refuses a global,
    the file is read by :func:`read_restricted`, where refused globals become
    :class:`Placeholder` objects (see :func:`placeholder_names`).

    Args:
        path: A file written by ``torch.save``.
        mmap: Memory-map the storages (copy-on-write) instead of reading
            them, so entries that are never used cost no memory.

    Returns:
        The unpickled object, with every tensor on the CPU.

    Raises:
        SafeLoadError: missing, empty, truncated or corrupt file; not a torch
            checkpoint; a legacy-format file that needs more than tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise SafeLoadError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise SafeLoadError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise SafeLoadError(f"{path}: the file is empty (an interrupted download or copy?)")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head.startswith(b"PK"):
        raise SafeLoadError(f"{path}: a truncated or damaged zip archive (an interrupted download or copy?); fetch the file again")
    if not is_zip and not head.startswith(_LEGACY_MAGIC):
        raise SafeLoadError(f"{path}: not a PyTorch checkpoint (neither torch's zip format nor its legacy format)")
    if is_zip:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise SafeLoadError(f"{path}: a damaged zip archive ({load_error_summary(e)}); fetch the file again") from None
        if not any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
            raise SafeLoadError(f"{path}: a zip archive but not a PyTorch checkpoint (no '<name>/data.pkl' entry)")
    try:
        with warnings.catch_warnings():
            # torch notes legacy storages and pickle protocols before refusing; the error below says more
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as e:
        refused = refused_global(e)
        if not is_zip:
            what = f"it references {refused}" if refused else "torch's tensor-only loader refuses it"
            raise SafeLoadError(
                f"{path}: a checkpoint in torch's legacy (pre-1.6) format that holds more than tensors ({what}); "
                "only zip-format files can be read without running their code. Re-save it with a current "
                "torch.save from a trusted environment, or obtain a newer copy."
            ) from None
    except Exception as e:
        raise SafeLoadError(f"{path}: cannot be read ({load_error_summary(e)}); the file is truncated or corrupt") from None
    return read_restricted(path, mmap=mmap)
