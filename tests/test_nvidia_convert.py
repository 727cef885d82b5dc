"""NVIDIA stylegan2-ada-pytorch pickles: safe reading and exact conversion.

The pickles here are built like NVIDIA's: stub modules named and laid out as
in ``training/networks.py``, pickled through a persistence hook registered as
``torch_utils.persistence._reconstruct_persistent_obj`` with a ``module_src``
that would leave a mark if anything executed it. The converted generator is
compared with a forward pass written below from NVIDIA's formulation,
reading the NVIDIA-named tensors directly.
"""

import contextlib
import json
import math
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylegan2 import load_generator
from stylegan2.nvidia import (
    ForbiddenGlobalError,
    NvidiaPickleError,
    convert_nvidia_pickle,
    load_nvidia_pickle,
    nvidia_to_reference,
)
from stylegan2.utils import sha256_file

REPO = Path(__file__).resolve().parents[1]
FILTER = [1, 3, 3, 1]


# ----------------------------------------------------------------------------
# Stub NVIDIA modules, pickled in NVIDIA's persistent format


class _Hook:
    """Stand-in for NVIDIA's persistence module while a test pickle is written."""

    module_src = None
    sentinel = None


def _reconstruct_persistent_obj(meta):
    # NVIDIA's real hook exec()s meta["module_src"]; this one only leaves a mark.
    Path(_Hook.sentinel).write_text("persistence hook was called")
    raise RuntimeError("persistence hook was called")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict."""


EasyDict.__module__ = "dnnlib.util"


@contextlib.contextmanager
def nvidia_modules():
    """Register the stand-ins under NVIDIA's module names, only while pickling."""
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils.persistence = persistence
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib.util = util
    names = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(names)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Persistent(torch.nn.Module):
    """Pickles as NVIDIA's persistent classes do: hook(meta) with the plain __dict__ as state."""

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=_Hook.module_src, class_name=type(self).__name__,
                    state=dict(self.__dict__))
        return (_reconstruct_persistent_obj, (meta,), None)


def _setup_filter(taps):
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f.ger(f)
    return f / f.sum()


class FullyConnectedLayer(_Persistent):
    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init)) + 0.1 * torch.randn(out_features))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)  # a numpy float64, as in NVIDIA's pickles
        self.bias_gain = lr_multiplier


class MappingNetwork(_Persistent):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr_multiplier=0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = 0.995
        features = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * num_layers
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, w_dim)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", 0.5 * torch.randn(w_dim))


class SynthesisLayer(_Persistent):
    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, True, "lrelu"
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _setup_filter(FILTER))
        self.padding = 1
        self.act_gain = np.sqrt(2)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = torch.nn.Parameter(0.5 * torch.randn([]))
        self.bias = torch.nn.Parameter(0.3 * torch.randn(out_channels))


class ToRGBLayer(_Persistent):
    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = torch.nn.Parameter(0.3 * torch.randn(out_channels))
        self.weight_gain = 1 / np.sqrt(in_channels)


class SynthesisBlock(_Persistent):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, conv_clamp=None,
                 architecture="skip"):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution, self.img_channels = in_channels, w_dim, resolution, img_channels
        self.is_last, self.architecture, self.use_fp16, self.channels_last = is_last, architecture, False, False
        self.register_buffer("resample_filter", _setup_filter(FILTER))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1
        if in_channels and architecture == "resnet":
            self.skip = FullyConnectedLayer(1, 1)  # only its name matters to the converter


class SynthesisNetwork(_Persistent):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, **block_kwargs):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   res == img_resolution, **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)


class NvGenerator(_Persistent):
    def __init__(self, z_dim=512, c_dim=0, w_dim=512, img_resolution=32, img_channels=3, mapping_kwargs=None,
                 synthesis_kwargs=None):
        super().__init__()
        mapping_kwargs, synthesis_kwargs = EasyDict(mapping_kwargs or {}), EasyDict(synthesis_kwargs or {})
        self._init_kwargs = EasyDict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                     img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                     synthesis_kwargs=synthesis_kwargs)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)


NvGenerator.__name__ = "Generator"  # the class name NVIDIA's pickles carry

SMALL = dict(img_resolution=32, mapping_kwargs=dict(num_layers=2),
             synthesis_kwargs=dict(channel_base=32768, channel_max=16))


def write_nvidia_pickle(path, sentinel, seed=0, extra=None, **generator_kwargs):
    """Write ``{"G", "D", "G_ema", ...}`` as NVIDIA's training loop does; return G_ema."""
    torch.manual_seed(seed)
    kwargs = {**SMALL, **generator_kwargs}
    G_ema = NvGenerator(**kwargs).eval()
    G = NvGenerator(**kwargs)
    _Hook.sentinel = str(sentinel)
    # If anything executed module_src, it would leave the sentinel file and stop.
    _Hook.module_src = f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('module_src ran')\nraise SystemExit(3)\n"
    data = dict(G=G, D=None, G_ema=G_ema, augment_pipe=None,
                training_set_kwargs=EasyDict(path="afhq.zip", resolution=kwargs["img_resolution"], xflip=True))
    data.update(extra or {})
    with nvidia_modules(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return G_ema


# ----------------------------------------------------------------------------
# NVIDIA's forward pass, written from training/networks.py and torch_utils/ops


def nv_upfirdn2d(x, f, up=1, padding=(0, 0, 0, 0), gain=1):
    """upfirdn2d with flip_filter=False: zero-insert, pad [x0, x1, y0, y1], true convolution with f * gain."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, height, 1, width, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(batch, channels, height * up, width * up)
    x = F.pad(x, list(padding))
    f = (f * gain ** (f.ndim / 2)).flip([0, 1])  # conv2d correlates: flip for a true convolution
    return F.conv2d(x, f[None, None].repeat(channels, 1, 1, 1), groups=channels)


def nv_fc(layer, x):
    """FullyConnectedLayer: weight * weight_gain, bias * bias_gain, then bias_act (lrelu gain sqrt 2)."""
    x = x @ (layer.weight * float(layer.weight_gain)).t() + layer.bias * layer.bias_gain
    return F.leaky_relu(x, 0.2) * math.sqrt(2) if layer.activation == "lrelu" else x


def nv_modulated_conv2d(x, weight, styles, demodulate, up, padding, f):
    """modulated_conv2d + conv2d_resample, one sample at a time (no weight gain: NVIDIA applies none)."""
    out = []
    for xb, sb in zip(x, styles):
        w = weight * sb.reshape(1, -1, 1, 1)  # [O, I, k, k]
        if demodulate:
            w = w * (w.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt().reshape(-1, 1, 1, 1)
        xb = xb[None]
        if up == 1:
            # flip_weight=True (up == 1): conv2d as is, padding kernel_size // 2.
            out.append(F.conv2d(xb, w, padding=padding))
            continue
        # up=2 with flip_weight=False: conv2d_resample transposes the weight to [I, O, k, k] and runs
        # conv_transpose2d with flip_weight=(not False), i.e. no flip. Its padding, for a filter of fw
        # taps and kernel kw: px0 = padding + (fw + up - 1)//2 - (kw - 1), px1 = padding + (fw - up)//2
        # - (kw - up); both are 1 here and the transposed conv gets max(min(-px0, -px1), 0) = 0.
        fw, kw = f.shape[-1], w.shape[-1]
        px0 = padding + (fw + up - 1) // 2 - (kw - 1)
        px1 = padding + (fw - up) // 2 - (kw - up)
        y = F.conv_transpose2d(xb, w.transpose(0, 1), stride=up)
        out.append(nv_upfirdn2d(y, f, padding=(px0, px1, px0, px1), gain=up**2))
    return torch.cat(out)


def nv_bias_act(x, b, act_gain, clamp):
    x = F.leaky_relu(x + b.reshape(1, -1, 1, 1), 0.2) * act_gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def nv_synthesis_layer(layer, x, w):
    styles = nv_fc(layer.affine, w)
    x = nv_modulated_conv2d(x, layer.weight, styles, True, layer.up, layer.padding, layer.resample_filter)
    x = x + layer.noise_const * layer.noise_strength  # noise_mode="const", added after demodulation
    return nv_bias_act(x, layer.bias, float(layer.act_gain), layer.conv_clamp)


def nv_torgb(layer, x, w):
    styles = nv_fc(layer.affine, w) * float(layer.weight_gain)  # ToRGB scales the styles, no demodulation
    x = nv_modulated_conv2d(x, layer.weight, styles, False, 1, 0, None)
    x = x + layer.bias.reshape(1, -1, 1, 1)
    return x.clamp(-layer.conv_clamp, layer.conv_clamp) if layer.conv_clamp is not None else x


def nv_synthesis(net, ws):
    """SynthesisNetwork: block b gets ws[w_idx : w_idx + num_conv + num_torgb], w_idx += num_conv."""
    x = img = None
    w_idx = 0
    for res in net.block_resolutions:
        block = getattr(net, f"b{res}")
        block_ws = iter(ws[:, w_idx : w_idx + block.num_conv + block.num_torgb].unbind(1))
        w_idx += block.num_conv
        if block.in_channels == 0:
            x = block.const[None].repeat(ws.shape[0], 1, 1, 1)
            x = nv_synthesis_layer(block.conv1, x, next(block_ws))
        else:
            x = nv_synthesis_layer(block.conv0, x, next(block_ws))
            x = nv_synthesis_layer(block.conv1, x, next(block_ws))
        if img is not None:
            # upsample2d: up=2, padding [(fw + 1)//2, (fw - 2)//2] per axis, gain up^2.
            fw = block.resample_filter.shape[-1]
            p0, p1 = (fw + 1) // 2, (fw - 2) // 2
            img = nv_upfirdn2d(img, block.resample_filter, up=2, padding=(p0, p1, p0, p1), gain=4)
        y = nv_torgb(block.torgb, x, next(block_ws))
        img = y if img is None else img + y
    return img


def nv_mapping(net, z, truncation_psi=1):
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
    for i in range(net.num_layers):
        x = nv_fc(getattr(net, f"fc{i}"), x)
    x = x.unsqueeze(1).repeat(1, net.num_ws, 1)
    return net.w_avg.lerp(x, truncation_psi) if truncation_psi != 1 else x


# ----------------------------------------------------------------------------
# Conversion is exact


@pytest.mark.parametrize("resolution", [32, 64])
def test_converted_generator_matches_nvidia_forward(tmp_path, resolution):
    sentinel = tmp_path / "sentinel"
    G_ema = write_nvidia_pickle(tmp_path / "net.pkl", sentinel, img_resolution=resolution)
    meta = convert_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "net.pt")[2]
    assert not sentinel.exists()

    g, info = load_generator(tmp_path / "net.pt")
    assert info["config"]["size"] == resolution and info["config"]["n_mlp"] == 2
    assert info["config"]["channel_multiplier"] == 2  # channel_base 32768 / 16384
    assert info["meta"] == meta
    assert meta["source"] == "net.pkl" and meta["source_sha256"] == sha256_file(tmp_path / "net.pkl")
    assert meta["resolution"] == resolution and meta["network"] == "G_ema"
    torch.testing.assert_close(info["latent_avg"], G_ema.mapping.w_avg)

    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(5))
    wplus = torch.randn(3, G_ema.num_ws, 512, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected_z = nv_synthesis(G_ema.synthesis, nv_mapping(G_ema.mapping, z, truncation_psi=0.7))
        expected_wplus = nv_synthesis(G_ema.synthesis, wplus)  # a distinct code per slot pins the slot order
        ours_z = g([z], truncation=0.7, truncation_latent=info["latent_avg"][None], randomize_noise=False)[0]
        ours_wplus = g([wplus], input_is_latent=True, randomize_noise=False)[0]
    assert expected_z.abs().mean() > 0.1
    torch.testing.assert_close(ours_z, expected_z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_wplus, expected_wplus, rtol=1e-4, atol=1e-4)


def test_real_layout_names_map_onto_the_reference_manifests(fixtures):
    """Full-size NVIDIA tensor names and shapes (config-f formulas), mapped, equal the reference keys."""
    for resolution, manifest in [(1024, "1024_cm2"), (512, "512_cm2")]:
        nv = {}
        for i in range(8):
            nv[f"mapping.fc{i}.weight"] = (512, 512)
            nv[f"mapping.fc{i}.bias"] = (512,)
        nv["mapping.w_avg"] = (512,)
        channels = {res: min(32768 // res, 512) for res in (2**k for k in range(2, int(math.log2(resolution)) + 1))}
        for res, c in channels.items():
            prefix = f"synthesis.b{res}"
            nv[f"{prefix}.resample_filter"] = (4, 4)
            if res == 4:
                nv[f"{prefix}.const"] = (c, 4, 4)
            layers = [("conv1", c)] if res == 4 else [("conv0", channels[res // 2]), ("conv1", c)]
            for name, cin in layers:
                nv[f"{prefix}.{name}.weight"] = (c, cin, 3, 3)
                nv[f"{prefix}.{name}.bias"] = (c,)
                nv[f"{prefix}.{name}.noise_strength"] = ()
                nv[f"{prefix}.{name}.noise_const"] = (res, res)
                nv[f"{prefix}.{name}.resample_filter"] = (4, 4)
                nv[f"{prefix}.{name}.affine.weight"] = (cin, 512)
                nv[f"{prefix}.{name}.affine.bias"] = (cin,)
            nv[f"{prefix}.torgb.weight"] = (3, c, 1, 1)
            nv[f"{prefix}.torgb.bias"] = (3,)
            nv[f"{prefix}.torgb.affine.weight"] = (c, 512)
            nv[f"{prefix}.torgb.affine.bias"] = (c,)
        tensors = {k: torch.empty(s, device="meta") for k, s in nv.items()}
        state, latent_avg, filters = nvidia_to_reference(tensors)
        assert latent_avg.shape == (512,) and len(filters) == 1 + 3 * (len(channels) - 1) + 1

        data = json.loads((fixtures / "stylegan2" / f"generator_keys_{manifest}.json").read_text())
        kernels = {e["key"] for e in data["state_dict"] if e["key"].endswith("kernel")}
        expected = {e["key"]: tuple(e["shape"]) for e in data["state_dict"] if e["key"] not in kernels}
        assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_conv_clamp_warns_once_with_its_value(tmp_path):
    write_nvidia_pickle(tmp_path / "ada.pkl", tmp_path / "s", synthesis_kwargs=dict(channel_max=16, conv_clamp=256))
    with pytest.warns(UserWarning, match=r"conv_clamp=256\b") as record:
        convert_nvidia_pickle(tmp_path / "ada.pkl")
    assert len([w for w in record if "conv_clamp" in str(w.message)]) == 1


def test_script_converts_a_pickle(tmp_path):
    write_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "s")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_nvidia_pkl.py"), str(tmp_path / "net.pkl"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "32x32" in result.stdout and (tmp_path / "out.pt").is_file()
    raw = torch.load(tmp_path / "out.pt", weights_only=True)
    assert raw["meta"]["source"] == "net.pkl" and raw["generator"]["size"] == 32


def test_reading_keeps_plain_state_and_never_runs_module_src(tmp_path):
    write_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "s")
    data = load_nvidia_pickle(tmp_path / "net.pkl")
    G = data["G_ema"]
    assert G.class_name == "Generator" and G.modules["synthesis"].modules["b4"].class_name == "SynthesisBlock"
    assert isinstance(data["training_set_kwargs"], dict) and data["training_set_kwargs"]["xflip"] is True
    fc = G.modules["mapping"].modules["fc0"]
    assert fc.attr("weight_gain") == pytest.approx(0.01 / math.sqrt(512))  # numpy float64 read as a number
    assert G.attr("synthesis_kwargs")["channel_max"] == 16
    assert G.module_src_sha256 is not None and not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------
# Refusals


class _Call:
    """Pickles as a call of ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class _PlainObject:
    pass


def _exploits(sentinel):
    touch = f"import pathlib; pathlib.Path({str(sentinel)!r}).write_text('ran')"
    return {
        "os.system": _Call(os.system, f"touch {sentinel}"),
        "builtins.eval": _Call(eval, touch),
        "builtins.exec": _Call(exec, touch),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(sentinel)]),
        "builtins.getattr": _Call(getattr, "text", "upper"),
        "a plain class": _PlainObject(),
    }


@pytest.mark.parametrize("exploit", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen",
                                     "builtins.getattr", "a plain class"])
def test_pickles_with_other_globals_are_refused_and_nothing_runs(tmp_path, exploit):
    sentinel = tmp_path / "ran"
    payload = _exploits(sentinel)[exploit]
    # Hidden inside an otherwise valid network, after its tensors.
    write_nvidia_pickle(tmp_path / "evil.pkl", tmp_path / "s", extra={"zzz": payload})
    with pytest.raises(ForbiddenGlobalError) as e:
        convert_nvidia_pickle(tmp_path / "evil.pkl", tmp_path / "out.pt")
    expected_name = {"os.system": "system", "a plain class": "_PlainObject"}.get(exploit, exploit.split(".")[-1])
    assert expected_name in str(e.value) and "Nothing from the file was executed" in str(e.value)
    assert not sentinel.exists() and not (tmp_path / "s").exists() and not (tmp_path / "out.pt").exists()


def test_unsafe_bytes_inside_a_tensor_storage_are_refused(tmp_path):
    sentinel = tmp_path / "ran"
    inner = pickle.dumps(_Call(os.system, f"touch {sentinel}"), protocol=2)
    storage_record = _Call(torch.storage._load_from_bytes, inner)
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"G_ema": storage_record}, f)
    with pytest.raises(NvidiaPickleError, match="tensor storage"):
        load_nvidia_pickle(tmp_path / "evil.pkl")
    assert not sentinel.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path):
    write_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "s")
    data = (tmp_path / "net.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(NvidiaPickleError, match="truncated or corrupt"):
        convert_nvidia_pickle(tmp_path / "cut.pkl")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(c_dim=10), r"conditional \(c_dim=10\)"),
        (dict(z_dim=256), r"z_dim=256; only 512"),
        (dict(w_dim=256), r"w_dim=256; only 512"),
        (dict(synthesis_kwargs=dict(channel_max=16, architecture="resnet")), r"architecture 'resnet'"),
    ],
)
def test_unsupported_generators_are_refused(tmp_path, kwargs, message):
    write_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "s", **kwargs)
    with pytest.raises(NvidiaPickleError, match=message):
        convert_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_missing_network_is_reported(tmp_path):
    write_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "s")
    with pytest.raises(NvidiaPickleError, match=r"no 'G_avg' network.*'G_ema'"):
        convert_nvidia_pickle(tmp_path / "net.pkl", network="G_avg")


def test_generator_state_that_is_not_stylegan2_is_reported():
    tensors = {"synthesis.b4.const": torch.zeros(8, 4, 4), "synthesis.b4.conv1.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(NvidiaPickleError, match="no tensor 'synthesis.b4.conv1.affine.weight'"):
        nvidia_to_reference(tensors)

