"""StyleGAN2 custom ops: references against naive implementations, the autograd
wrappers of the compiled ops, the build/self-check/fallback logic, and (marked
``cuda_build``) a real compilation of both extensions with nvcc."""

import itertools
import os
import shutil
import stat
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from stylegan2.ops import (
    FusedLeakyReLU,
    _build,
    _extension,
    _fused_act_cuda,
    _upfirdn2d_cuda,
    fused_leaky_relu,
    fused_leaky_relu_ref,
    upfirdn2d,
    upfirdn2d_ref,
)
from stylegan2.ops._extension import LazyOp, OpFallbackWarning

SQRT2 = 2**0.5


# --------------------------------------------------------------------------
# Independent implementations the references are checked against.


def naive_upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1):
    """upfirdn2d spelled out step by step with numpy and explicit loops."""
    x, f = x.numpy(), f.numpy()
    n, c, h, w = x.shape
    kh, kw = f.shape

    # Zero insertion: input sample (i, j) lands at (i * upy, j * upx).
    upsampled = np.zeros((n, c, h * upy, w * upx))
    for i in range(h):
        for j in range(w):
            upsampled[:, :, i * upy, j * upx] = x[:, :, i, j]

    # Padding (negative = cropping): padded (r, s) reads upsampled (r - pady0, s - padx0).
    height, width = h * upy + pady0 + pady1, w * upx + padx0 + padx1
    padded = np.zeros((n, c, height, width))
    for r in range(height):
        for s in range(width):
            if 0 <= r - pady0 < h * upy and 0 <= s - padx0 < w * upx:
                padded[:, :, r, s] = upsampled[:, :, r - pady0, s - padx0]

    # True convolution = correlation with the flipped kernel, "valid" region.
    flipped = f[::-1, ::-1]
    filtered = np.zeros((n, c, height - kh + 1, width - kw + 1))
    for r in range(height - kh + 1):
        for s in range(width - kw + 1):
            filtered[:, :, r, s] = (padded[:, :, r : r + kh, s : s + kw] * flipped).sum(axis=(2, 3))

    # Striding keeps every down-th sample, starting with the first.
    return torch.from_numpy(filtered[:, :, ::downy, ::downx].copy())


def naive_fused_leaky_relu(x, bias, negative_slope, scale):
    v = x.numpy().copy()
    if bias is not None:
        v = v + bias.numpy().reshape(1, -1, *([1] * (x.ndim - 2)))
    return torch.from_numpy(np.where(v > 0, v, v * negative_slope) * scale)


def away_from_zero(*shape, dtype=torch.float64):
    """Values with |v| >= 0.1, so finite differences never straddle the kink."""
    v = torch.randn(shape, dtype=dtype)
    return torch.where(v >= 0, v + 0.1, v - 0.1)


# --------------------------------------------------------------------------
# References


UPS = [(1, 1), (2, 2), (2, 1), (1, 3)]
DOWNS = [(1, 1), (2, 2), (1, 2), (3, 1)]
PADS = [(0, 0, 0, 0), (2, 1, 2, 1), (1, -1, -2, 3), (-1, 2, 0, -2)]
KERNELS = [(4, 4), (3, 3), (1, 4), (3, 2)]


@pytest.mark.parametrize("up,down", list(itertools.product(UPS, DOWNS)))
def test_upfirdn2d_ref_matches_naive_loops(up, down):
    checked = 0
    for pad, kernel in itertools.product(PADS, KERNELS):
        x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
        f = torch.randn(kernel, dtype=torch.float64)
        args = (*up, *down, *pad)
        padded = (5 * up[1] + pad[2] + pad[3], 4 * up[0] + pad[0] + pad[1])
        if padded[0] < kernel[0] or padded[1] < kernel[1]:
            with pytest.raises(ValueError, match="smaller than the kernel"):
                upfirdn2d_ref(x, f, *args)
            continue
        want = naive_upfirdn2d(x, f, *args)
        got = upfirdn2d_ref(x, f, *args)
        assert got.shape == want.shape, (args, kernel)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{args} {kernel}")
        checked += 1
    assert checked >= 12  # the grid must mostly be valid settings, not only errors


def test_upfirdn2d_public_function_parses_pairs_and_pads():
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    f = torch.randn(3, 2, dtype=torch.float64)
    got = upfirdn2d(x, f, up=(2, 1), down=(1, 2), pad=(1, 0, -1, 2))
    torch.testing.assert_close(got, naive_upfirdn2d(x, f, 2, 1, 1, 2, 1, 0, -1, 2))
    # A 2-tuple pad applies to both axes.
    torch.testing.assert_close(
        upfirdn2d(x, f, up=2, pad=(2, 1)), naive_upfirdn2d(x, f, 2, 2, 1, 1, 2, 1, 2, 1)
    )
    with pytest.raises(ValueError, match="up and down must be >= 1"):
        upfirdn2d(x, f, down=0)


@pytest.mark.parametrize(
    "args,kernel",
    [
        ((2, 2, 1, 1, 2, 1, 2, 1), (4, 4)),
        ((1, 1, 2, 2, 1, 1, 1, 1), (4, 4)),
        ((2, 1, 1, 3, 1, -1, 2, 0), (3, 2)),
    ],
)
def test_upfirdn2d_ref_gradcheck(args, kernel):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    f = torch.randn(kernel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, f: upfirdn2d_ref(x, f, *args), (x, f))


@pytest.mark.parametrize(
    "shape,with_bias,slope,scale",
    [
        ((2, 3, 4, 4), True, 0.2, SQRT2),
        ((3, 5), True, 0.0, 1.0),
        ((2, 4, 3), False, 0.1, 0.5),
        ((2, 3, 2, 2), True, -0.3, -1.5),
    ],
)
def test_fused_leaky_relu_ref_matches_formula_and_gradcheck(shape, with_bias, slope, scale):
    x = away_from_zero(*shape)
    bias = torch.zeros(shape[1], dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(
        fused_leaky_relu_ref(x, bias, slope, scale), naive_fused_leaky_relu(x, bias, slope, scale)
    )
    # A random bias would move some x + b next to the kink; zero keeps it away
    # and still lets gradcheck check the bias gradient.
    x.requires_grad_()
    if with_bias:
        bias.requires_grad_()
        inputs, fn = (x, bias), lambda x, b: fused_leaky_relu_ref(x, b, slope, scale)
    else:
        inputs, fn = (x,), lambda x: fused_leaky_relu_ref(x, None, slope, scale)
    assert torch.autograd.gradcheck(fn, inputs)


def test_fused_leaky_relu_module_honours_bias_slope_and_scale():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    layer = FusedLeakyReLU(3, negative_slope=0.1, scale=0.7).double()
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out = layer(x)
    torch.testing.assert_close(out, naive_fused_leaky_relu(x, layer.bias.detach(), 0.1, 0.7))

    # d(sum(out * g))/d bias_c = sum over (n, h, w) of g * scale * (1 or slope).
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, layer.bias, g)
    v = x + layer.bias.detach().view(1, 3, 1, 1)
    want = (g * 0.7 * torch.where(v > 0, 1.0, 0.1)).sum((0, 2, 3))
    torch.testing.assert_close(grad, want)

    no_bias = FusedLeakyReLU(3, bias=False, negative_slope=0.3, scale=2.0).double()
    assert no_bias.bias is None
    torch.testing.assert_close(no_bias(x), naive_fused_leaky_relu(x, None, 0.3, 2.0))


def test_fused_leaky_relu_rejects_mismatched_bias():
    with pytest.raises(ValueError, match="does not match the channel dimension"):
        fused_leaky_relu(torch.randn(2, 3, 4), torch.zeros(4))


# --------------------------------------------------------------------------
# Dispatch and import


def test_wants_cuda_honours_impl_and_ipl_ops(monkeypatch):
    on_gpu = types.SimpleNamespace(is_cuda=True)
    on_cpu = torch.zeros(1)
    monkeypatch.delenv("IPL_OPS", raising=False)
    assert _extension.wants_cuda(on_gpu, None)
    assert _extension.wants_cuda(on_gpu, "cuda")
    assert not _extension.wants_cuda(on_gpu, "ref")
    assert not _extension.wants_cuda(on_cpu, None)
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        _extension.wants_cuda(on_cpu, "cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        _extension.wants_cuda(on_gpu, "triton")
    monkeypatch.setenv("IPL_OPS", "ref")
    assert not _extension.wants_cuda(on_gpu, None)


def test_import_compiles_nothing_without_nvcc_or_ninja(tmp_path):
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any(os.path.exists(os.path.join(d, tool)) for tool in ("nvcc", "ninja"))
    )
    extensions_dir = tmp_path / "torch_extensions"
    extensions_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(PATH=path, TORCH_EXTENSIONS_DIR=str(extensions_dir))
    code = "\n".join(
        [
            "import sys, shutil, torch",
            "assert shutil.which('nvcc') is None and shutil.which('ninja') is None",
            "import stylegan2, stylegan2.ops",
            "from stylegan2.ops import upfirdn2d, fused_leaky_relu",
            "y = upfirdn2d(torch.ones(1, 1, 4, 4), torch.ones(2, 2), up=2, pad=(1, 0))",
            "z = fused_leaky_relu(torch.ones(1, 2, 3), torch.zeros(2))",
            "assert y.shape == (1, 1, 8, 8) and z.shape == (1, 2, 3)",
            "assert 'torch.utils.cpp_extension' not in sys.modules, 'cpp_extension imported'",
            "assert not [m for m in sys.modules if m.startswith(('ipl_upfirdn2d', 'ipl_fused'))]",
            "assert not torch.cuda.is_initialized(), 'CUDA initialised'",
            "print('clean')",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
    assert list(extensions_dir.iterdir()) == []


# --------------------------------------------------------------------------
# Autograd wrappers of the compiled ops, driven by pure-PyTorch stand-ins for
# the kernels (the real kernels are checked in the cuda_build test below).


class CountingKernel:
    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        with torch.no_grad():
            return self.fn(*args)


def upfirdn2d_standin():
    return CountingKernel(lambda x, f, *args: upfirdn2d_ref(x, f, *args))


def fused_act_standins():
    """Kernels following the contract of csrc/fused_bias_act.h."""

    def forward(x, b, slope, scale):
        return fused_leaky_relu_ref(x, b if b.numel() else None, slope, scale)

    def grad(dy, ref, b, kind, slope, scale):
        if kind == _fused_act_cuda.REF_INPUT:
            positive = (ref + b.view(1, -1, *([1] * (ref.ndim - 2))) if b.numel() else ref) > 0
        elif kind == _fused_act_cuda.REF_OUTPUT_POS_SCALE:
            positive = ref > 0
        else:
            positive = ref < 0
        return dy * torch.where(positive, scale, slope * scale).to(dy.dtype)

    return CountingKernel(forward), CountingKernel(grad)


@pytest.mark.parametrize(
    "args,kernel",
    [
        ((2, 2, 1, 1, 2, 1, 2, 1), (4, 4)),
        ((1, 1, 2, 2, 1, 1, 1, 1), (4, 4)),
        ((2, 1, 1, 3, 1, -1, 2, 0), (3, 2)),
        ((1, 3, 2, 1, 0, 2, -1, 1), (2, 5)),
        ((3, 2, 2, 3, -2, 3, 1, -1), (3, 3)),
    ],
)
def test_upfirdn2d_op_gradients_match_reference(args, kernel):
    op = _upfirdn2d_cuda.make_op(upfirdn2d_standin())
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    f = torch.randn(kernel, dtype=torch.float64)
    y = op(x, f, *args)
    want = upfirdn2d_ref(x, f, *args)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, x, g)[0], torch.autograd.grad(want, x, g)[0]
    )
    # The backward is itself an upfirdn2d, so second-order gradients hold too.
    small = torch.randn(1, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: op(x, f, *args), (small,))


def test_upfirdn2d_op_leaves_a_trainable_kernel_to_the_reference():
    kernel = upfirdn2d_standin()
    op = _upfirdn2d_cuda.make_op(kernel)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    f = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    y = op(x, f, 2, 2, 1, 1, 1, 1, 1, 1)
    (df,) = torch.autograd.grad(y.square().sum(), f)
    (want,) = torch.autograd.grad(upfirdn2d_ref(x, f, 2, 2, 1, 1, 1, 1, 1, 1).square().sum(), f)
    torch.testing.assert_close(df, want)
    assert kernel.calls == 0


@pytest.mark.parametrize(
    "slope,scale,with_bias,shape",
    [
        (0.2, SQRT2, True, (2, 3, 4, 4)),  # saves the output, positive scale
        (0.0, 1.0, True, (3, 5)),
        (0.1, -0.7, False, (2, 4, 3)),  # saves the output, negative scale
        (-0.3, 0.5, True, (2, 3, 2, 2)),  # negative slope: saves the input
    ],
)
def test_fused_act_op_gradients_match_reference(slope, scale, with_bias, shape):
    forward, grad = fused_act_standins()
    op = _fused_act_cuda.make_op(forward, grad)
    x = away_from_zero(*shape).requires_grad_()
    bias = torch.zeros(shape[1], dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = (x, bias) if with_bias else (x,)

    y = op(x, bias, slope, scale)
    want = fused_leaky_relu_ref(x, bias, slope, scale)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, inputs, g), torch.autograd.grad(want, inputs, g)
    )

    def fn(x, b=None):
        return op(x, b, slope, scale)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
    assert forward.calls > 0 and grad.calls > 0


def test_fused_act_op_casts_bias_to_input_dtype():
    op = _fused_act_cuda.make_op(*fused_act_standins())
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float32, requires_grad=True)
    y = op(x, bias, 0.2, SQRT2)
    assert y.dtype == torch.float64
    (db,) = torch.autograd.grad(y.sum(), bias)
    assert db.dtype == torch.float32
    torch.testing.assert_close(y, fused_leaky_relu_ref(x, bias, 0.2, SQRT2))


# --------------------------------------------------------------------------
# Build once, self-check, fall back with one warning


class CountingBuild:
    def __init__(self, make):
        self.make = make
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.make()


def failing_build():
    raise RuntimeError("Error building extension 'ipl_upfirdn2d': nvcc fatal: no such toolkit")


def fallback_warnings(caught):
    return [w for w in caught if issubclass(w.category, OpFallbackWarning)]


@pytest.fixture
def pretend_cuda(monkeypatch):
    """Route CPU calls of the public functions through get_op."""
    monkeypatch.setattr(_extension, "wants_cuda", lambda x, impl: True)
    monkeypatch.delenv("IPL_OPS", raising=False)


def test_build_failure_warns_once_and_is_not_retried(pretend_cuda, monkeypatch):
    build = CountingBuild(failing_build)
    monkeypatch.setitem(
        _extension._OPS, "upfirdn2d", LazyOp("upfirdn2d", build, _upfirdn2d_cuda.check_inputs)
    )
    x, f = torch.randn(2, 3, 8, 8), torch.randn(4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [upfirdn2d(x, f, up=2, pad=(2, 1)) for _ in range(3)]
    assert build.calls == 1
    (warning,) = fallback_warnings(caught)
    assert "nvcc fatal: no such toolkit" in str(warning.message)
    assert "reference" in str(warning.message)
    for y in results:
        torch.testing.assert_close(y, upfirdn2d_ref(x, f, 2, 2, 1, 1, 2, 1, 2, 1))


def test_wrong_forward_fails_self_check_and_falls_back_once(pretend_cuda, monkeypatch):
    def wrong_op(x, bias, negative_slope, scale):
        # Off by 0.1%: far above float32 rounding, so the check must see it.
        return fused_leaky_relu_ref(x, bias, negative_slope, scale) * 1.001

    build = CountingBuild(lambda: wrong_op)
    monkeypatch.setitem(
        _extension._OPS,
        "fused_bias_act",
        LazyOp("fused_bias_act", build, _fused_act_cuda.check_inputs),
    )
    x, bias = torch.randn(2, 3, 4, 4), torch.randn(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [fused_leaky_relu(x, bias) for _ in range(3)]
    assert build.calls == 1
    (warning,) = fallback_warnings(caught)
    assert "disagrees with the reference: output" in str(warning.message)
    for y in results:
        torch.testing.assert_close(y, fused_leaky_relu_ref(x, bias))


def test_wrong_gradient_alone_fails_self_check(pretend_cuda, monkeypatch):
    # Forward right, backward ignoring the kink: only the gradient comparison can see it.
    forward, _ = fused_act_standins()

    def grad_without_kink(dy, ref, b, kind, slope, scale):
        return dy * scale

    op = _fused_act_cuda.make_op(forward, grad_without_kink)
    monkeypatch.setitem(
        _extension._OPS,
        "fused_bias_act",
        LazyOp("fused_bias_act", lambda: op, _fused_act_cuda.check_inputs),
    )
    x = torch.randn(2, 3, 4, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = fused_leaky_relu(x, None, 0.2, 1.0)
        (dx,) = torch.autograd.grad(y.sum(), x)
    (warning,) = fallback_warnings(caught)
    assert "gradient" in str(warning.message)
    torch.testing.assert_close(dx, torch.where(x > 0, 1.0, 0.2))


def test_self_check_error_falls_back_with_its_message(pretend_cuda, monkeypatch):
    def broken_op(*args):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    build = CountingBuild(lambda: broken_op)
    monkeypatch.setitem(
        _extension._OPS, "upfirdn2d", LazyOp("upfirdn2d", build, _upfirdn2d_cuda.check_inputs)
    )
    x, f = torch.randn(1, 2, 6, 6), torch.randn(4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = upfirdn2d(x, f, down=2, pad=(1, 1))
        y2 = upfirdn2d(x, f, down=2, pad=(1, 1))
    (warning,) = fallback_warnings(caught)
    assert "no kernel image is available" in str(warning.message)
    assert build.calls == 1
    want = upfirdn2d_ref(x, f, 1, 1, 2, 2, 1, 1, 1, 1)
    torch.testing.assert_close(y1, want)
    torch.testing.assert_close(y2, want)


def test_correct_op_is_used_after_one_self_check_per_dtype(pretend_cuda, monkeypatch):
    kernel = upfirdn2d_standin()
    build = CountingBuild(lambda: _upfirdn2d_cuda.make_op(kernel))
    checks = []

    def counting_check_inputs(device, dtype, generator):
        checks.append(dtype)
        return _upfirdn2d_cuda.check_inputs(device, dtype, generator)

    monkeypatch.setitem(
        _extension._OPS, "upfirdn2d", LazyOp("upfirdn2d", build, counting_check_inputs)
    )
    f = torch.randn(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpFallbackWarning)
        # Under inference mode, where the self-check still needs gradients.
        with torch.inference_mode():
            x = torch.randn(2, 3, 8, 8)
            y = upfirdn2d(x, f, up=2, pad=(2, 1))
        torch.testing.assert_close(y, upfirdn2d_ref(x, f, 2, 2, 1, 1, 2, 1, 2, 1))
        calls_after_first = kernel.calls
        for dtype in (torch.float32, torch.float64, torch.float64):
            x = torch.randn(2, 3, 8, 8, dtype=dtype)
            torch.testing.assert_close(
                upfirdn2d(x, f, up=2, pad=(2, 1)),
                upfirdn2d_ref(x, f, 2, 2, 1, 1, 2, 1, 2, 1),
            )
    assert build.calls == 1
    assert checks == [torch.float32, torch.float64]
    assert kernel.calls > calls_after_first  # the op itself served the later calls


def test_get_op_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown compiled op"):
        _extension.get_op("upfirdn3d", upfirdn2d_ref)


# --------------------------------------------------------------------------
# Build environment (no compilation)


def make_fake_toolkit(root, answers_dry_run=True):
    """A folder shaped like a CUDA toolkit, with an nvcc script that answers a
    dry run the way the real one does, or fails."""
    home = root / "cuda-12.9"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("")
    nvcc = home / "bin" / "nvcc"
    if answers_dry_run:
        nvcc.write_text(
            f'#!/bin/sh\necho "#$ _HERE_={home}/bin" >&2\necho "#$ TOP={home}/bin/.." >&2\n'
        )
    else:
        nvcc.write_text("#!/bin/sh\nexit 1\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return home


def clear_cuda_vars(monkeypatch):
    for var in ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(var, raising=False)


def test_find_cuda_home_resolves_a_linked_nvcc(tmp_path, monkeypatch):
    home = make_fake_toolkit(tmp_path, answers_dry_run=False)
    links = tmp_path / "usr" / "bin"
    links.mkdir(parents=True)
    (links / "nvcc").symlink_to(home / "bin" / "nvcc")
    clear_cuda_vars(monkeypatch)
    monkeypatch.setenv("PATH", str(links))
    # PyTorch's own guess would be the folder above the link, tmp_path/usr.
    assert _build.find_cuda_home() == str(home)


def test_find_cuda_home_asks_a_wrapper_script_nvcc(tmp_path, monkeypatch):
    home = make_fake_toolkit(tmp_path)
    wrappers = tmp_path / "local" / "bin"
    wrappers.mkdir(parents=True)
    wrapper = wrappers / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {home}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    clear_cuda_vars(monkeypatch)
    monkeypatch.setenv("PATH", str(wrappers))
    assert _build.find_cuda_home() == str(home)


def test_find_cuda_home_prefers_the_variables_and_explains_a_missing_nvcc(tmp_path, monkeypatch):
    clear_cuda_vars(monkeypatch)
    monkeypatch.setenv("CUDA_PATH", "/opt/my-cuda")
    assert _build.find_cuda_home() == "/opt/my-cuda"
    monkeypatch.delenv("CUDA_PATH")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="nvcc is not on PATH.*set CUDA_HOME"):
        _build.find_cuda_home()


def test_build_environment_sets_only_unset_variables_then_restores(tmp_path, monkeypatch):
    home = make_fake_toolkit(tmp_path)
    clear_cuda_vars(monkeypatch)
    monkeypatch.setenv("PATH", str(home / "bin"))
    from torch.utils import cpp_extension

    home_before = cpp_extension.CUDA_HOME
    expected_arch = None if torch.cuda.is_available() else _build.ARCH_WITHOUT_GPU
    with _build.build_environment() as module:
        assert module is cpp_extension
        assert os.environ["CUDA_HOME"] == str(home) == cpp_extension.CUDA_HOME
        assert os.environ.get("TORCH_CUDA_ARCH_LIST") == expected_arch
    assert "CUDA_HOME" not in os.environ and "TORCH_CUDA_ARCH_LIST" not in os.environ
    assert cpp_extension.CUDA_HOME == home_before

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5;9.0")
    monkeypatch.setenv("CUDA_HOME", "/opt/my-cuda")
    with _build.build_environment():
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "7.5;9.0"
        assert os.environ["CUDA_HOME"] == "/opt/my-cuda"
        assert cpp_extension.CUDA_HOME == home_before  # the user's choice stays PyTorch's
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "7.5;9.0"


# --------------------------------------------------------------------------
# Real compilation (build only: no GPU needed)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Both extensions compiled with nvcc into fresh folders (a few minutes)."""
    found = {"nvcc": shutil.which("nvcc"), "ninja": _build.find_ninja()}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not found: cannot compile the CUDA extensions"
        if os.environ.get("IPL_REQUIRE_NVCC") == "1":
            pytest.fail(f"{reason} (IPL_REQUIRE_NVCC=1 requires it)")
        pytest.skip(f"{reason} (set IPL_REQUIRE_NVCC=1 to make this a failure)")
    modules = {}
    for name, sources in [
        (_upfirdn2d_cuda.EXTENSION, _upfirdn2d_cuda.SOURCES),
        (_fused_act_cuda.EXTENSION, _fused_act_cuda.SOURCES),
    ]:
        directory = tmp_path_factory.mktemp(name)
        modules[name] = _build.load_extension(name, sources, build_directory=str(directory))
        assert any(p.suffix == ".so" for p in directory.iterdir()), f"{name} left no library"
    return modules


@pytest.mark.cuda_build
def test_compiled_upfirdn2d_matches_reference_on_cpu(compiled):
    # The extension's CPU loop runs the same per-sample code as its CUDA kernel.
    module = compiled[_upfirdn2d_cuda.EXTENSION]
    for up, down, pad, kernel in itertools.product(UPS, DOWNS, PADS, KERNELS):
        x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
        f = torch.randn(kernel, dtype=torch.float64)
        args = (*up, *down, *pad)
        try:
            want = upfirdn2d_ref(x, f, *args)
        except ValueError:
            with pytest.raises(RuntimeError, match="smaller than the kernel"):
                module.upfirdn2d(x, f, *args)
            continue
        torch.testing.assert_close(module.upfirdn2d(x, f, *args), want, msg=f"{args} {kernel}")
    x32, f32 = torch.randn(2, 3, 9, 7), torch.randn(4, 4)
    up2 = (2, 2, 1, 1, 2, 1, 2, 1)
    torch.testing.assert_close(module.upfirdn2d(x32, f32, *up2), upfirdn2d_ref(x32, f32, *up2))
    with pytest.raises(RuntimeError, match="cast f to x.dtype"):
        module.upfirdn2d(x32, f32.double(), 1, 1, 1, 1, 0, 0, 0, 0)

    op = _upfirdn2d_cuda.make_op(module.upfirdn2d)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: op(x, f, 2, 1, 1, 3, 1, -1, 2, 0), (x,))


@pytest.mark.cuda_build
def test_compiled_fused_bias_act_matches_reference_on_cpu(compiled):
    module = compiled[_fused_act_cuda.EXTENSION]
    op = _fused_act_cuda.make_op(module.fused_bias_act, module.fused_bias_act_grad)
    for slope, scale in [(0.2, SQRT2), (0.0, 1.0), (0.1, -0.7), (-0.3, 0.5)]:
        for shape, with_bias in [((2, 3, 4, 4), True), ((3, 5), True), ((2, 4, 3), False)]:
            x = away_from_zero(*shape).requires_grad_()
            bias = torch.zeros(shape[1], dtype=torch.float64) if with_bias else None
            if bias is not None:
                bias.requires_grad_()
            inputs = (x, bias) if with_bias else (x,)

            def fn(x, b=None):
                return op(x, b, slope, scale)

            torch.testing.assert_close(fn(*inputs), fused_leaky_relu_ref(x, bias, slope, scale))
            assert torch.autograd.gradcheck(fn, inputs)
            assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.cuda_build
def test_compiled_ops_pass_their_own_self_check_on_cpu(compiled):
    up = compiled[_upfirdn2d_cuda.EXTENSION]
    act = compiled[_fused_act_cuda.EXTENSION]
    lazy_up = LazyOp(
        "upfirdn2d", lambda: _upfirdn2d_cuda.make_op(up.upfirdn2d), _upfirdn2d_cuda.check_inputs
    )
    lazy_act = LazyOp(
        "fused_bias_act",
        lambda: _fused_act_cuda.make_op(act.fused_bias_act, act.fused_bias_act_grad),
        _fused_act_cuda.check_inputs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpFallbackWarning)
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.randn(2, 3, 8, 8, dtype=dtype)
            f = torch.ones(4, 4, dtype=dtype) / 16
            lazy_up.resolve(upfirdn2d_ref)(x, f, 2, 2, 1, 1, 2, 1, 2, 1)
            lazy_act.resolve(fused_leaky_relu_ref)(x, torch.zeros(3, dtype=dtype), 0.2, SQRT2)
    assert lazy_up.failure is None and lazy_act.failure is None
