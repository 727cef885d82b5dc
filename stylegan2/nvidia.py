"""Convert NVIDIA stylegan2-ada-pytorch network pickles without running their code.

NVIDIA's ``.pkl`` files (``ffhq.pkl``, ``afhqdog.pkl``, ...) are written with
``pickle.dump`` of a dict of ``torch.nn.Module`` objects (``G``, ``D``,
``G_ema``, ...). Their classes are "persistent": each module pickles as a
call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type, version, module_src, class_name, state}``, where
``module_src`` is the Python source of the defining module, which NVIDIA's
loader ``exec``s, and ``state`` the module's ``__dict__`` (``_parameters``,
``_buffers``, ``_modules`` and plain attributes such as ``_init_kwargs``).
Tensors use torch's own pickle reduction: ``torch._utils._rebuild_tensor_v2``
over a storage given as ``torch.storage._load_from_bytes(<legacy torch.save
bytes>)``, parameters ``torch._utils._rebuild_parameter``.

:class:`SafeUnpickler` resolves only an explicit allow-list of globals, each
to a small function of ours that builds plain data, and refuses anything else
before it could run. The persistence hook becomes :class:`PersistentObject`,
holding the plain ``state``; ``module_src`` is kept only as its SHA-256.

The conversion to the reference port's names follows from NVIDIA's
``training/networks.py`` and ``torch_utils/ops``:

* mapping ``fc{i}`` are ``FullyConnectedLayer``s with ``weight_gain =
  lr/sqrt(in)``, ``bias_gain = lr`` and a sqrt(2)-gained leaky ReLU: the same
  storage convention as ``EqualLinear(lr_mul=lr)``, so ``style.{i+1}`` takes
  the tensors unchanged;
* ``SynthesisLayer`` with ``up=2`` calls ``conv2d_resample`` with
  ``flip_weight=False``; the transposed convolution then runs with
  ``flip_weight=True``, i.e. ``conv_transpose2d(x, w.transpose(0, 1),
  stride=2)`` on the unflipped weight, padding 0, then the FIR filter with
  padding 1 and gain 4: exactly the reference port's upsampling conv and
  blur, so the weight is copied without a flip (both projects flip the
  TensorFlow weight when converting from TF, so they agree);
* ``SynthesisLayer`` applies no ``1/sqrt(fan_in)`` weight gain before
  demodulation, the reference port does. Demodulation divides by the norm of
  the (gained) weight, so a constant gain cancels: the same stored weight
  gives the same layer. Only the place of the 1e-8 in
  ``rsqrt(sum w^2 + 1e-8)`` moves (a relative change of order
  ``1e-8 * fan_in / sum (w s)^2``, below float32 resolution). The weight is
  copied, which also reproduces the TensorFlow originals exactly (they apply
  the gain, like the reference port);
* ``ToRGBLayer`` multiplies the styles by ``weight_gain = 1/sqrt(in)``
  without demodulation; the reference port multiplies the weight by the same
  factor: identical, copied unchanged; its bias ``(3,)`` becomes ``(1, 3, 1, 1)``;
* 4-D conv weights ``(O, I, k, k)`` gain a leading 1; ``b4.const (C, 4, 4)``
  becomes ``input.input (1, C, 4, 4)``; ``noise_strength ()`` becomes
  ``noise.weight (1,)``; ``noise_const (r, r)`` becomes ``noises.noise_i (1, 1, r, r)``
  in layer order; ``mapping.w_avg`` is the ``latent_avg``;
* W slots: ``b4`` uses ws[0] (conv1) and ws[1] (torgb); ``b{r}`` starts at
  the slot after the previous block's convs, which is the reference port's
  ``latent[:, i], latent[:, i + 1], latent[:, i + 2]`` walk.

``conv_clamp`` (ADA models clamp activations to +-256) has no counterpart in
the reference generator: the converter warns once with its value.
"""

import collections
import hashlib
import io
import math
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, build_generator, infer_generator_config, save_generator
from .model import Generator, make_kernel
from .utils import load_error_summary, sha256_file

SOURCE_NAME = "stylegan2-ada-pytorch"
PICKLE_REMEDY = (
    "Download the pickle again: python scripts/download_pretrained.py NAME for the registry models "
    "(ffhq, afhqdog, ...), else from the page that publishes it"
)
_STYLE_DIM = 512


class NvidiaPickleError(CheckpointError):
    """An NVIDIA pickle that cannot be read or converted; the message says why."""


class ForbiddenGlobalError(NvidiaPickleError):
    """The pickle references a global outside the allow-list; nothing was run."""

    def __init__(self, module, name):
        self.global_name = f"{module}.{name}"
        super().__init__(
            f"refused to load the pickle: it references the global '{self.global_name}', which is not on the "
            "allow-list of data types an NVIDIA network pickle needs (tensors, storages, dicts, numpy numbers, "
            "NVIDIA's persistence hook). Nothing from the file was executed. Only convert pickles of "
            "stylegan2-ada-pytorch networks, from a source you trust."
        )


# ----------------------------------------------------------------------------
# Replacements for the allowed globals: each builds plain data and nothing else.


class PersistentObject:
    """What NVIDIA's persistence hook describes: a class name and a plain state.

    Attributes:
        class_name: Name of the NVIDIA class (``"Generator"``, ``"SynthesisLayer"``, ...).
        state: The module's ``__dict__``: ``_parameters``, ``_buffers``,
            ``_modules`` (name -> PersistentObject) and plain attributes.
        version: NVIDIA's persistence format version.
        module_src_sha256: SHA-256 of the embedded source (never executed).
    """

    def __init__(self, class_name, state, version=None, module_src_sha256=None):
        self.class_name = class_name
        self.state = state
        self.version = version
        self.module_src_sha256 = module_src_sha256

    @property
    def modules(self):
        return self.state.get("_modules") or {}

    def attr(self, name, default=None):
        """A plain attribute, or an entry of the constructor kwargs."""
        if name in self.state:
            return self.state[name]
        return (self.state.get("_init_kwargs") or {}).get(name, default)

    def __repr__(self):
        return f"PersistentObject({self.class_name!r})"


def _persistent_object(meta):
    """Stands in for ``torch_utils.persistence._reconstruct_persistent_obj``: never executes ``module_src``."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise NvidiaPickleError(f"unexpected persistent-object record in the pickle: {type(meta).__name__}")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise NvidiaPickleError(f"persistent object {meta['class_name']} has a non-dict state ({type(state).__name__})")
    src = meta.get("module_src")
    src_sha = hashlib.sha256(src.encode("utf-8")).hexdigest() if isinstance(src, str) else None
    return PersistentObject(meta["class_name"], dict(state), meta.get("version"), src_sha)


class _EasyDict(dict):
    """``dnnlib.util.EasyDict`` read as a plain dict."""


def _storage_from_bytes(data):
    """Stands in for ``torch.storage._load_from_bytes``, with torch's weights-only loader."""
    if not isinstance(data, (bytes, bytearray)):
        raise NvidiaPickleError(f"tensor storage record holds {type(data).__name__}, expected bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation notice
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as e:
        raise NvidiaPickleError(f"a tensor storage in the pickle was refused or unreadable ({load_error_summary(e)})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise NvidiaPickleError(f"a tensor storage record decoded to {type(storage).__name__}, expected a storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stands in for ``torch._utils._rebuild_tensor(_v2)``: a view of a storage, bounds checked."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise NvidiaPickleError(f"tensor record over a {type(storage).__name__}, expected a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or storage_offset < 0 or min(size + stride, default=0) < 0:
        raise NvidiaPickleError(f"invalid tensor record: offset {storage_offset}, size {size}, stride {stride}")
    tensor = torch.empty((0,), dtype=storage.dtype)
    available = storage._untyped_storage.nbytes() // tensor.element_size()
    if all(size):
        end = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
        if end > available:
            raise NvidiaPickleError(f"tensor record reads past its storage ({end} > {available} elements)")
    return tensor.set_(storage._untyped_storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    """Stands in for ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise NvidiaPickleError(f"parameter record holds {type(data).__name__}, expected a tensor")
    return data


_SAFE_DTYPE_KINDS = "biufc"  # bool, int, uint, float, complex: no objects, no records


class _NumpyDType:
    """Stands in for ``numpy.dtype`` (numbers only)."""

    def __init__(self, name, *_ignored):
        try:
            dtype = np.dtype(str(name))
        except TypeError:
            raise NvidiaPickleError(f"unknown numpy dtype {name!r} in the pickle") from None
        if dtype.kind not in _SAFE_DTYPE_KINDS:
            raise NvidiaPickleError(f"numpy dtype {name!r} (kind {dtype.kind!r}) is not a plain number type; refused")
        self.dtype = dtype

    def __setstate__(self, state):
        byteorder = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        if byteorder in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(byteorder)


def _numpy_scalar(dtype, data):
    """Stands in for ``numpy.core.multiarray.scalar``: a Python number."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, (bytes, bytearray)):
        raise NvidiaPickleError("malformed numpy scalar record in the pickle")
    return np.frombuffer(bytes(data), dtype=dtype.dtype, count=1)[0].item()


class _NumpyArrayClass:
    """Marks ``numpy.ndarray`` where it appears as an argument of ``_reconstruct``."""


class _NumpyArray:
    """Stands in for an ndarray being unpickled; :func:`_finish` swaps in ``array``."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise NvidiaPickleError("malformed numpy array record in the pickle")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _NumpyDType) or not isinstance(raw, (bytes, bytearray)):
            raise NvidiaPickleError("numpy array of objects in the pickle; refused")
        self.array = np.frombuffer(bytes(raw), dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C").copy()


def _numpy_reconstruct(cls, *_ignored):
    if cls is not _NumpyArrayClass:
        raise NvidiaPickleError("numpy _reconstruct called with something other than ndarray; refused")
    return _NumpyArray()


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy", "ndarray"): _NumpyArrayClass,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and has no persistent ids.

    Every opcode that could call or build an object of an arbitrary type
    (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) goes through :meth:`find_class`;
    anything not allowed raises :class:`ForbiddenGlobalError` before it is
    looked up, let alone called.
    """

    def find_class(self, module, name):
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise ForbiddenGlobalError(module, name)
        return target

    def persistent_load(self, pid):
        raise NvidiaPickleError(f"unexpected persistent id in the pickle: {str(pid)[:80]}; refused")


def _finish(obj, seen=None):
    """Swap numpy placeholders for arrays and EasyDicts for dicts, in place."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, _NumpyArray):
        return obj.array
    if isinstance(obj, PersistentObject):
        obj.state = _finish(obj.state, seen)
        return obj
    if isinstance(obj, dict):
        items = {k: _finish(v, seen) for k, v in obj.items()}
        if isinstance(obj, _EasyDict):
            return items
        obj.update(items)
        return obj
    if isinstance(obj, list):
        obj[:] = [_finish(v, seen) for v in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_finish(v, seen) for v in obj)
    return obj


def load_nvidia_pickle(path):
    """Read an NVIDIA network pickle as plain data, executing nothing.

    Returns:
        The unpickled top-level object (normally a dict with ``G``, ``D``,
        ``G_ema``, ...), where every network is a :class:`PersistentObject`
        and every tensor a plain CPU tensor.

    Raises:
        ForbiddenGlobalError: the pickle needs a global outside the allow-list.
        NvidiaPickleError: the file is missing, truncated or malformed.
    """
    path = Path(path)
    if path.is_dir():
        raise NvidiaPickleError(f"{path} is a folder, not an NVIDIA network pickle (.pkl). {PICKLE_REMEDY}")
    if not path.is_file():
        raise NvidiaPickleError(f"pickle not found: {path}. {PICKLE_REMEDY}")
    if path.stat().st_size == 0:
        raise NvidiaPickleError(f"{path}: the file is empty (an interrupted download or copy?). {PICKLE_REMEDY}")
    if zipfile.is_zipfile(path):
        raise NvidiaPickleError(
            f"{path} is a zip archive (e.g. a torch checkpoint), not an NVIDIA network pickle: a generator "
            "checkpoint needs no conversion (pass it as generator.checkpoint or --source), and NVIDIA's "
            f"networks are plain .pkl pickles. {PICKLE_REMEDY}"
        )
    try:
        with open(path, "rb") as f:
            data = SafeUnpickler(f).load()
    except NvidiaPickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as e:
        raise NvidiaPickleError(
            f"{path}: not a readable pickle ({load_error_summary(e)}); the file is truncated or corrupt. {PICKLE_REMEDY}"
        ) from None
    return _finish(data)


# ----------------------------------------------------------------------------
# NVIDIA names -> reference-port names


def named_tensors(obj, prefix=""):
    """``{name: tensor}`` of a PersistentObject tree, named like ``state_dict()``."""
    if not isinstance(obj, PersistentObject):
        raise NvidiaPickleError(f"'{prefix.rstrip('.') or 'network'}' is a {type(obj).__name__}, expected an NVIDIA module")
    out = {}
    skip = obj.state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (obj.state.get(group) or {}).items():
            if tensor is not None and name not in skip:
                if not isinstance(tensor, torch.Tensor):
                    raise NvidiaPickleError(f"'{prefix}{name}' is a {type(tensor).__name__}, expected a tensor")
                out[prefix + name] = tensor
    for name, child in obj.modules.items():
        if child is not None:
            out.update(named_tensors(child, f"{prefix}{name}."))
    return out


def _synthesis_layers(resolution):
    """``[(nvidia_prefix, reference_prefix, noise_index)]`` of the modulated 3x3 convs."""
    layers = [("synthesis.b4.conv1", "conv1", 0)]
    for i, res in enumerate(2**k for k in range(3, int(math.log2(resolution)) + 1)):
        layers.append((f"synthesis.b{res}.conv0", f"convs.{2 * i}", 2 * i + 1))
        layers.append((f"synthesis.b{res}.conv1", f"convs.{2 * i + 1}", 2 * i + 2))
    return layers


def _torgb_layers(resolution):
    layers = [("synthesis.b4.torgb", "to_rgb1")]
    layers += [(f"synthesis.b{2**k}.torgb", f"to_rgbs.{k - 3}") for k in range(3, int(math.log2(resolution)) + 1)]
    return layers


def nvidia_to_reference(tensors):
    """Rename and reshape NVIDIA generator tensors to the reference port's state dict.

    Pure: works on any tensors, including ``device="meta"`` ones.

    Args:
        tensors: ``{name: tensor}`` of an NVIDIA ``Generator`` (``mapping.fc0.weight``,
            ``synthesis.b4.const``, ...), e.g. from :func:`named_tensors`.

    Returns:
        ``(state_dict, latent_avg, resample_filters)``: the reference-named
        parameters and noise buffers (without the FIR kernel buffers, which
        the generator builds), ``mapping.w_avg`` or None, and NVIDIA's
        ``resample_filter`` buffers by name (to be checked by the caller).

    Raises:
        NvidiaPickleError: a tensor is missing, or a tensor has no
            counterpart in the reference generator (e.g. a ``resnet`` skip).
    """
    left = dict(tensors)

    def take(name):
        if name not in left:
            raise NvidiaPickleError(f"the NVIDIA generator has no tensor '{name}'; it is not a StyleGAN2 (config-f) generator")
        return left.pop(name)

    blocks = [int(m.group(1)) for k in left if (m := re.match(r"synthesis\.b(\d+)\.", k))]
    if not blocks:
        raise NvidiaPickleError("the NVIDIA generator has no synthesis blocks ('synthesis.b4', ...)")
    resolution = max(blocks)

    out = {}
    n_mlp = len({m.group(1) for k in left if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k))})
    for i in range(n_mlp):
        out[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias")
    out["input.input"] = take("synthesis.b4.const").unsqueeze(0)

    noises = {}
    for src, dst, noise_index in _synthesis_layers(resolution):
        # Weight copied as stored: demodulation cancels the gain NVIDIA leaves out (module docstring).
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
        out[f"{dst}.activate.bias"] = take(f"{src}.bias")
        noises[f"noises.noise_{noise_index}"] = take(f"{src}.noise_const")[None, None]
    for src, dst in _torgb_layers(resolution):
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, -1, 1, 1)
    out.update(noises)

    latent_avg = left.pop("mapping.w_avg", None)
    filters = {k: left.pop(k) for k in list(left) if k.endswith(".resample_filter")}
    if left:
        name = sorted(left)[0]
        hint = " (a 'resnet' or 'orig' synthesis architecture; only 'skip' is supported)" if ".skip." in name else ""
        raise NvidiaPickleError(f"the NVIDIA generator tensor '{name}' has no counterpart in the reference generator{hint}")
    return out, latent_avg, filters


# ----------------------------------------------------------------------------
# Checks on the NVIDIA network and the conversion


def _check_generator(G):
    """Refuse NVIDIA generators the reference network cannot represent."""
    if not isinstance(G, PersistentObject) or G.class_name != "Generator":
        found = G.class_name if isinstance(G, PersistentObject) else type(G).__name__
        raise NvidiaPickleError(f"expected an NVIDIA 'Generator' network, found {found}")
    mapping, synthesis = G.modules.get("mapping"), G.modules.get("synthesis")
    if not isinstance(mapping, PersistentObject) or not isinstance(synthesis, PersistentObject):
        raise NvidiaPickleError("the NVIDIA Generator has no 'mapping' / 'synthesis' networks")
    if synthesis.class_name != "SynthesisNetwork" or "b4" not in synthesis.modules:
        raise NvidiaPickleError(
            f"the synthesis network is a '{synthesis.class_name}' without StyleGAN2 blocks "
            "(StyleGAN3 and other generators are not supported)"
        )

    c_dim = G.attr("c_dim", mapping.attr("c_dim", 0)) or 0
    if c_dim > 0 or "embed" in mapping.modules:
        raise NvidiaPickleError(
            f"the generator is conditional (c_dim={c_dim}): it needs a class label, which the reference "
            "generator has no input for. Use an unconditional model."
        )
    for name in ("z_dim", "w_dim"):
        value = G.attr(name, mapping.attr(name))
        if value != _STYLE_DIM:
            raise NvidiaPickleError(f"the mapping network has {name}={value}; only {_STYLE_DIM} is supported (CLIP-guided code assumes it)")
    channels = G.attr("img_channels", synthesis.attr("img_channels", 3))
    if channels != 3:
        raise NvidiaPickleError(f"the generator makes {channels}-channel images; only RGB (3) is supported")

    for i in range(mapping.attr("num_layers", 8)):
        fc = mapping.modules.get(f"fc{i}")
        if isinstance(fc, PersistentObject) and fc.attr("activation", "lrelu") != "lrelu":
            raise NvidiaPickleError(f"mapping.fc{i} uses activation {fc.attr('activation')!r}; only 'lrelu' is supported")
    for res_name, block in synthesis.modules.items():
        architecture = block.attr("architecture", "skip") if isinstance(block, PersistentObject) else "skip"
        if architecture != "skip":
            raise NvidiaPickleError(f"synthesis.{res_name} has architecture {architecture!r}; only 'skip' is supported")
        for layer_name, layer in (block.modules if isinstance(block, PersistentObject) else {}).items():
            if isinstance(layer, PersistentObject) and layer.class_name == "SynthesisLayer":
                if layer.attr("activation", "lrelu") != "lrelu":
                    raise NvidiaPickleError(f"synthesis.{res_name}.{layer_name} uses activation {layer.attr('activation')!r}")
                if not layer.attr("use_noise", True):
                    raise NvidiaPickleError(f"synthesis.{res_name}.{layer_name} has no noise input (use_noise=False); not supported")
    return mapping, synthesis


def _conv_clamps(synthesis):
    values = set()
    for block in synthesis.modules.values():
        for layer in block.modules.values() if isinstance(block, PersistentObject) else ():
            value = layer.attr("conv_clamp") if isinstance(layer, PersistentObject) else None
            if value is not None:
                values.add(float(value))
    return sorted(values)


def _lr_mapping(mapping):
    fc0 = mapping.modules.get("fc0")
    gain = fc0.attr("bias_gain") if isinstance(fc0, PersistentObject) else None
    return float(gain) if gain is not None else float(mapping.attr("lr_multiplier", 0.01))


def _channel_multiplier(G):
    """channel_base / 16384 from the constructor kwargs (32768 = config-f = 2), if integral."""
    synthesis_kwargs = G.attr("synthesis_kwargs") or {}
    base = synthesis_kwargs.get("channel_base") if isinstance(synthesis_kwargs, dict) else None
    if isinstance(base, (int, float)) and base >= 16384 and base % 16384 == 0:
        return int(base // 16384)
    return None


def convert_generator(G, source="<network>"):
    """Build our Generator from an NVIDIA ``Generator`` :class:`PersistentObject`.

    Returns:
        ``(generator, latent_avg, details)`` with ``details`` a dict of
        ``resolution``, ``channel_multiplier``, ``conv_clamp``, ``lr_mapping``.

    Raises:
        NvidiaPickleError: unsupported network (conditional, other widths,
            other architecture, other filter) or tensors that do not fit.
    """
    mapping, synthesis = _check_generator(G)
    state_dict, latent_avg, filters = nvidia_to_reference(named_tensors(G))

    expected_filter = make_kernel((1, 3, 3, 1))  # NVIDIA's setup_filter([1, 3, 3, 1]) is the same normalised outer product
    for name, f in filters.items():
        if tuple(f.shape) != tuple(expected_filter.shape) or not torch.allclose(f.float(), expected_filter, atol=1e-7):
            raise NvidiaPickleError(f"'{name}' is not the [1, 3, 3, 1] FIR filter; other resampling filters are not supported")

    clamps = _conv_clamps(synthesis)
    if clamps:
        values = ", ".join(f"{v:g}" for v in clamps)
        warnings.warn(
            f"{source}: the NVIDIA generator clamps activations (conv_clamp={values}); the reference generator "
            "has no clamp, so outputs differ wherever an activation exceeds that bound (rare for trained models)",
            stacklevel=2,
        )

    hints = {"n_mlp": mapping.attr("num_layers", 8), "lr_mlp": _lr_mapping(mapping)}
    multiplier = _channel_multiplier(G)
    if multiplier is not None:
        hints["channel_multiplier"] = multiplier
    config = infer_generator_config(state_dict, hints)
    template = Generator(**config)
    for key, buffer in template.state_dict().items():
        if key.endswith((".blur.kernel", ".upsample.kernel")):
            state_dict[key] = buffer
    del template
    state_dict = {k: v.float() for k, v in state_dict.items()}
    try:
        generator = build_generator(state_dict, config, source)
    except CheckpointError as e:
        raise NvidiaPickleError(f"the converted tensors do not fit the reference generator: {e}") from None
    if latent_avg is not None:
        latent_avg = latent_avg.float().clone()
    details = dict(
        resolution=config["size"],
        channel_multiplier=config["channel_multiplier"],
        conv_clamp=clamps[0] if len(clamps) == 1 else (clamps or None),
        lr_mapping=config["lr_mlp"],
    )
    return generator.eval(), latent_avg, details


def convert_nvidia_pickle(pkl_path, out_path=None, network="G_ema", source_sha256=None):
    """Convert one network of an NVIDIA stylegan2-ada-pytorch pickle into our format.

    Args:
        pkl_path: The ``.pkl`` file (``ffhq.pkl``, ``afhqdog.pkl``, ...).
        out_path: Where to write the converted checkpoint (atomically), or
            None to only return the generator.
        network: Entry of the pickle to convert (``"G_ema"``, the averaged
            generator NVIDIA samples with; ``"G"`` also works).
        source_sha256: SHA-256 of ``pkl_path`` if already known (saves a pass).

    Returns:
        ``(generator, latent_avg, meta)``; ``meta`` is what the written file
        carries: source file name and SHA-256, network, resolution, channel
        multiplier, conv_clamp.
    """
    pkl_path = Path(pkl_path)
    data = load_nvidia_pickle(pkl_path)
    if isinstance(data, dict):
        if network not in data:
            keys = sorted(str(k) for k in data)
            raise NvidiaPickleError(f"{pkl_path}: no '{network}' network in the pickle (it has {keys})")
        G = data[network]
    else:
        G = data
    generator, latent_avg, details = convert_generator(G, source=pkl_path.name)
    meta = dict(
        source=pkl_path.name,
        source_sha256=source_sha256 or sha256_file(pkl_path),
        source_format=SOURCE_NAME,
        network=network,
        **details,
    )
    if out_path is not None:
        save_generator(out_path, generator, latent_avg=latent_avg, meta=meta)
    return generator, latent_avg, meta
