"""Check that a machine runs this project: compiled ops, golden outputs, both stages, speed.

    python benchmarks/gpu_check.py                          # a GPU node: about five minutes, op build included
    python benchmarks/gpu_check.py --quick --out /tmp/chk   # tiny sizes and short runs (CI runs this on a CPU)

Sections, each independent of the others (``--only`` picks some); the exit
status is 1 when any of them fails, 0 otherwise:

1. ``ops``: builds the CUDA ops, runs their self-checks, and compares the
   compiled ops with the references (outputs and gradients) on random inputs
   of every shape the 1024 px generator gives them.
2. ``golden``: the golden generator (``tests/fixtures/stylegan2``) on every
   computation path the device offers; without the fixture (a copy of the
   scripts alone), every path against the CPU reference path of the same
   network.
3. ``tiny``: the tiny configs end to end, finite outputs, and a run
   interrupted in each stage and resumed ends with the tensors of an
   uninterrupted one.
4. ``timing``: StyleGAN2 1024 + CLIP ViT-B/32 (fp16 on CUDA, as ``clip.load``
   gives), random weights: generator forward, Stage 1 from the bank, bank
   build, Stage 2, peak GPU memory each, and the projected time of a full
   run. On a CPU (or with ``--quick``) at tiny size.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (also printed). A
machine without CUDA skips the CUDA parts, one line each. Offline nodes:
README, "Checking a GPU machine".
"""

import argparse
import contextlib
import copy
import datetime
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Runs from a checkout that is not pip-installed (offline GPU nodes), also when
# started by another script (runpy) rather than as `python benchmarks/...`.
for _path in (REPO / "benchmarks", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import measurements  # noqa: E402  (benchmarks/measurements.py: the timing definitions of bench_stages.py)
from ipl import cli  # noqa: E402
import stylegan2.model  # noqa: E402
from stylegan2.golden import GOLDEN_ATOL, GOLDEN_CALLS, GOLDEN_LATENTS, GOLDEN_RTOL, golden_generator, golden_inputs  # noqa: E402
from stylegan2.model import CONV_IMPLS, EPILOGUES, RESAMPLE_IMPLS, Generator  # noqa: E402
from stylegan2.ops import _build, _extension, fused_leaky_relu_ref, upfirdn2d_ref  # noqa: E402
from stylegan2.ops._extension import OpFallbackWarning  # noqa: E402

SECTIONS = ("ops", "golden", "tiny", "timing")
FIXTURE = REPO / "tests" / "fixtures" / "stylegan2" / "golden_64_cm1.pt"
REFERENCE_PATH = ("grouped", "fast", "ref")  # the reference port's own computation
TINY_CONFIGS = ("tiny.yaml", "tiny_diffae.yaml")
PAPER_TIME = "10~20 minutes on one RTX 3090 (both stages, the authors' code)"

# Compiled ops against the reference: the bound of the ops' own self-check,
# max |compiled - reference| <= tolerance * (1 + max |reference|).
OP_TOLERANCE = _extension._TOLERANCE[torch.float32]
# The W+ gradient of every path against the CPU reference path's, relative to
# its largest entry. The golden network's gradients sum large terms of both
# signs: in float32 every formulation, the reference included, is up to 2e-3
# of the largest entry away from the float64 gradient on the CPU; a wrong
# index or adjoint errs by the order of the values.
GRADIENT_RTOL = 1e-2
# A resumed run against an uninterrupted one: bit for bit on the CPU. On CUDA
# some kernels accumulate in a varying order (atomic adds, e.g. in the
# backward of the bicubic resize in front of CLIP), so two identical runs may
# differ: a second uninterrupted run measures that, and every float tensor of
# the resumed run must be within RESUME_NOISE_FACTOR times that tensor's
# run-to-run difference, plus RESUME_FLOOR of its scale, max(1, max |x|).
# cuDNN is put in deterministic mode for these runs.
RESUME_NOISE_FACTOR = 10.0
RESUME_FLOOR = 1e-6

# Shortened tiny runs (--quick), per generator kind: a checkpoint and an
# interruption in each stage, sample grids only at the end (a Diff-AE run's
# Stage 2 length is its epochs times its training images).
QUICK_STAGE1 = ["stage1.iterations=10", "stage1.checkpoint_every=5", "stage1.log_every=5", "stage2.output_interval=1000"]
QUICK_TINY = {
    "stylegan2": ["stage1.batch=8", "stage2.iterations=6", "stage2.checkpoint_every=3", "stage2.log_every=3"],
    "diffae": ["data.n_train=4", "diffusionclip.epochs=1", "stage2.checkpoint_every=2", "stage2.log_every=2"],
}
# The timing section's models at tiny size: configs/tiny.yaml's architectures.
TINY_SPEC = dict(
    size=32, clip="tiny",
    overrides=["generator.style_dim=32", "generator.n_mlp=2", "generator.channel_multiplier=1", "generator.channel_max=32", "mapper.hidden_dim=32"],
)
FULL_SPEC = dict(size=1024, clip="random:ViT-B/32")


def no_cuda_reason():
    """Why the CUDA parts do not run: the words of the skip lines."""
    return "--device cpu" if torch.cuda.is_available() else "no CUDA device"


def say(section, message):
    print(f"[{section}] {message}", flush=True)


def result(status, summary, **data):
    return {"status": status, "summary": summary, **data}


# --------------------------------------------------------------------------
# Environment


def _run(cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device):
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "ninja": _build.find_ninja(),
        "nvcc": None,
        "IPL_OPS": os.environ.get("IPL_OPS"),
    }
    nvcc = shutil.which("nvcc")
    if os.environ.get("CUDA_HOME"):
        nvcc = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    if nvcc:
        version = _run([nvcc, "--version"])
        env["nvcc"] = f"{nvcc}: {version.splitlines()[-1]}" if version else nvcc
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            driver=None,
        )
        smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["driver"] = smi.splitlines()[0].strip() if smi else "unknown (nvidia-smi not found)"
    return env


# --------------------------------------------------------------------------
# 1. Compiled ops


def ensure_ninja():
    """ninja's path, after putting a pip-installed one (e.g. ``--target`` folder) on PATH."""
    found = _build.find_ninja()
    if found:
        return found
    candidates = [Path(entry) / "bin" / "ninja" for entry in sys.path if entry]
    spec = importlib.util.find_spec("ninja")
    if spec is not None and spec.origin:
        candidates.insert(0, Path(spec.origin).parent / "data" / "bin" / "ninja")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            os.environ["PATH"] = os.pathsep.join([str(candidate.parent), os.environ.get("PATH", "")])
            return str(candidate)
    return None


@contextlib.contextmanager
def op_fallbacks():
    """Collect the messages of the op fallback warnings raised in the block (also one
    whose text was shown before) into the yielded list; others are shown as usual."""
    fallbacks = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OpFallbackWarning)
        yield fallbacks
    for w in caught:
        if issubclass(w.category, OpFallbackWarning):
            fallbacks.append(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def op_probes(device):
    """``{op name: (reference, arguments of a first call)}``: the first call on a
    device and dtype runs the op's self-check."""
    return {
        "upfirdn2d": (upfirdn2d_ref, (torch.zeros(1, 1, 4, 4, device=device), torch.ones(2, 2, device=device))),
        "fused_bias_act": (fused_leaky_relu_ref, (torch.zeros(1, 2, 3, device=device), torch.zeros(2, device=device), 0.2, 2**0.5)),
    }


def build_and_self_check(name, ref, probe_args):
    """Build op ``name`` and run its self-check on the probe's device and dtype.

    Returns:
        ``(op, problem)``: the compiled op, or ``None`` and why not.
    """
    with op_fallbacks() as problems:
        op = _extension.get_op(name, ref)
        if op is not None:
            op(*probe_args)  # the first call on a device and dtype runs the self-check
    if op is None or problems:
        earlier = _extension._OPS[name].failure  # a failure is remembered, and warned about only once
        return None, "; ".join(problems) or earlier or "not built"
    return _extension.get_op(name, ref), None


class OpCase:
    """One call of an op: its name, a label, the input shapes and the fixed arguments."""

    def __init__(self, op, label, shape, **kwargs):
        self.op, self.label, self.shape, self.kwargs = op, label, tuple(shape), kwargs

    def arguments(self, device, generator):
        x = torch.randn(self.shape, device=device, generator=generator).requires_grad_()
        if self.op == "upfirdn2d":
            k = self.kwargs
            f = k["kernel"].to(device)
            up, down = k.get("up", 1), k.get("down", 1)
            pad = tuple(k["pad"]) * (2 if len(k["pad"]) == 2 else 1)  # (px0, px1, py0, py1)
            return (x, f, up, up, down, down, *pad)
        bias = torch.randn(self.shape[1], device=device, generator=generator).requires_grad_()
        return (x, bias, 0.2, 2**0.5)  # EqualLinear's and FusedLeakyReLU's settings


def generator_op_cases(g, batch):
    """Every ``upfirdn2d`` and fused bias + activation call ``g`` makes on CUDA, by shape.

    On CUDA the generator filters with ``upfirdn2d`` on every path, the
    reference epilogue and the mapping network call the fused activation,
    and ``resample="ref"`` upsamples by zero insertion (a 1x1 kernel). The
    downsampling settings are StyleGAN2's (the discriminator's; the
    generator has none), so that every branch of the kernel is compared.
    """
    cases = [OpCase("fused_bias_act", "mapping layer", (batch, g.style_dim)),
             OpCase("fused_bias_act", "StyledConv 4 px", (batch, g.channels[4], 4, 4))]
    for j, to_rgb in enumerate(g.to_rgbs):
        res = 2 ** (j + 3)
        up = g.convs[2 * j].conv  # the upsampling layer of this resolution
        k = up.kernel_size
        cases += [
            OpCase("upfirdn2d", f"zero insertion (resample=ref) {res} px", (batch, up.in_channel, res // 2, res // 2),
                   kernel=torch.ones(1, 1), up=2, pad=(k - 1, k - 2)),
            OpCase("upfirdn2d", f"blur after the upsampling conv {res} px", (batch, up.out_channel, res + 1, res + 1),
                   kernel=up.blur.kernel, pad=up.blur.pad),
            OpCase("upfirdn2d", f"RGB skip upsampling {res} px", (batch, 3, res // 2, res // 2),
                   kernel=to_rgb.upsample.kernel, up=2, pad=to_rgb.upsample.pad),
            OpCase("upfirdn2d", f"blur before a downsampling conv {res} px", (batch, up.out_channel, res, res),
                   kernel=up.blur.kernel / 4, pad=(2, 2)),
            OpCase("upfirdn2d", f"2x downsampling {res} px", (batch, up.out_channel, res, res),
                   kernel=up.blur.kernel / 4, down=2, pad=(1, 1)),
            OpCase("fused_bias_act", f"StyledConv {res} px", (batch, up.out_channel, res, res)),
        ]
    return cases


def compare_op(op, ref, case, device, generator):
    """The worst error of ``op`` against ``ref`` on one case, over the output and each input gradient."""
    args = case.arguments(device, generator)
    want = ref(*args)
    dy = torch.randn(want.shape, device=device, generator=generator)
    wrt = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    want = [want, *torch.autograd.grad(want, wrt, dy)]
    got = op(*args)
    got = [got, *torch.autograd.grad(got, wrt, dy)]
    checks = []  # (what, error, bound)
    for what, g, w in zip(["output"] + [f"gradient w.r.t. argument {i}" for i in range(len(wrt))], got, want):
        if g.shape != w.shape:
            return {"what": f"{what} of shape {tuple(g.shape)} instead of {tuple(w.shape)}", "error": math.inf, "bound": 0.0, "ok": False}
        checks.append((what, (g - w).abs().max().item(), OP_TOLERANCE * (1 + w.abs().max().item())))
    what, error, bound = max(checks, key=lambda c: c[1] / c[2] if c[1] == c[1] else math.inf)  # NaN first
    return {"what": what, "error": error, "bound": bound, "ok": all(e <= b for _, e, b in checks)}  # NaN fails


def check_ops(device, quick):
    if device.type != "cuda":
        return result("skip", f"{no_cuda_reason()} (the compiled ops run only on a GPU)")
    ninja = ensure_ninja()
    if ninja is None:
        return result("fail", "ninja not found: pip install ninja, or put the bin/ of the wheel folder's install on PATH (README, Checking a GPU machine)")
    say("ops", f"building the CUDA ops with {ninja} (first time: a minute or two)")
    probes = op_probes(device)
    ops, builds = {}, {}
    for name, (ref, probe) in probes.items():
        start = time.perf_counter()
        op, problem = build_and_self_check(name, ref, probe)
        builds[name] = {"seconds": round(time.perf_counter() - start, 1), "ok": op is not None, "problem": problem}
        say("ops", f"{name}: " + (f"built and self-checked in {builds[name]['seconds']} s" if op else f"FAILED: {problem}"))
        ops[name] = op
    if not all(ops.values()):
        return result("fail", "build or self-check failed: " + "; ".join(f"{n}: {b['problem']}" for n, b in builds.items() if not b["ok"]), builds=builds)

    refs = {name: ref for name, (ref, _) in probes.items()}
    cases = generator_op_cases(Generator(1024, channel_multiplier=2), batch=1 if quick else 2)
    generator = torch.Generator(device).manual_seed(0)
    rows = []
    for case in cases:
        r = compare_op(ops[case.op], refs[case.op], case, device, generator)
        rows.append({"op": case.op, "case": case.label, "shape": list(case.shape), **r})
        if not r["ok"]:
            say("ops", f"MISMATCH {case.op} {case.label} {case.shape}: {r['what']} max error {r['error']:.3g} > {r['bound']:.3g}")
        torch.cuda.empty_cache()
    worst = max(rows, key=lambda r: r["error"] / max(r["bound"], 1e-30) if r["error"] == r["error"] else math.inf)  # NaN first
    failed = [r for r in rows if not r["ok"]]
    built = ", ".join(f"{n} {b['seconds']:g} s" for n, b in builds.items())
    summary = (f"built and self-checked ({built}); {len(rows)} cases of the 1024 generator's shapes, outputs and gradients: max error {worst['error']:.3g} "
               f"({worst['op']}, {worst['case']}; bound {OP_TOLERANCE:g} x (1 + largest reference value) = {worst['bound']:.3g})")
    status = "fail" if failed else "pass"
    if failed:
        summary = f"{len(failed)} of {len(rows)} cases disagree; " + summary
    return result(status, summary, builds=builds, cases=rows, max_error=worst["error"])


# --------------------------------------------------------------------------
# 2. Golden outputs


@contextlib.contextmanager
def ops_mode(mode):
    """``IPL_OPS=ref`` (``mode="ref"``) or unset (``"compiled"``) for the block; every op call reads it."""
    previous = os.environ.pop("IPL_OPS", None)
    if mode == "ref":
        os.environ["IPL_OPS"] = "ref"
    try:
        yield
    finally:
        os.environ.pop("IPL_OPS", None)
        if previous is not None:
            os.environ["IPL_OPS"] = previous


@contextlib.contextmanager
def full_fp32():
    """No TF32 in matmuls and convolutions for the block: the golden check is of float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def split_per_sample():
    """Make the 64 px golden network render one sample at a time from 16 px on, as a
    generator of 128 px or more does on the CPU (tests/test_generator.py does the same)."""
    saved = stylegan2.model.PER_SAMPLE_RESOLUTION
    stylegan2.model.PER_SAMPLE_RESOLUTION = 16
    try:
        yield
    finally:
        stylegan2.model.PER_SAMPLE_RESOLUTION = saved


def golden_paths(device, quick, compiled=True):
    """``(label, (conv_impl, resample, epilogue), ops, split)`` of every path on ``device``.

    On CUDA with compiled and with reference ops (only the latter when
    ``compiled`` is false). On the CPU with ``quick``, ``"auto"`` only with
    the default resample and epilogue: it only picks between the two
    formulations per layer, which the other paths check one by one (as
    tests/test_generator.py does).
    """
    combos = list(itertools.product(CONV_IMPLS, RESAMPLE_IMPLS, EPILOGUES))
    if device.type == "cuda":
        kinds = ("compiled", "ref") if compiled else ("ref",)
        return [("-".join(c) + f" ops={ops}", c, ops, False) for ops in kinds for c in combos]
    if quick:
        combos = [c for c in combos if c[0] != "auto" or c[1:] == ("fast", "fused")]
    paths = [("-".join(c), c, "ref", False) for c in combos]
    return paths + [("auto-fast-fused per-sample split", ("auto", "fast", "fused"), "ref", True)]


def to_device(d, device):
    return {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in d.items()}


def wplus_gradient(g, d, dy):
    """``(image, d sum(image * dy) / d W+)`` of the ``out_wplus`` call, with autograd on."""
    wplus = d["wplus"].clone().requires_grad_()
    image, _ = g([wplus], input_is_latent=True, noise=d["noise"], randomize_noise=False)
    (grad,) = torch.autograd.grad((image * dy).sum(), wplus)
    return image.detach(), grad


def check_golden(device, quick):
    path = FIXTURE
    calls = ["out_z"] if quick else list(GOLDEN_CALLS)
    if path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        g_cpu = golden_generator(data["size"], data["channel_multiplier"])
        against = f"the fixture {path}"
    else:
        say("golden", f"fixture not found at {path}: comparing every path with the CPU reference path of the same golden-filled network instead")
        g_cpu = golden_generator()
        data = golden_inputs(g_cpu)
        against = "the CPU reference path (no fixture)"
    inputs = {k: data[k] for k in ("z", "z2", "w", "wplus", "truncation_mean_w", "noise")}
    expected = dict(data)
    g_cpu.set_impl(*REFERENCE_PATH)
    for out in calls:  # without the fixture, the CPU reference path gives the standard
        if out not in expected:
            with torch.no_grad():
                image, latent = g_cpu(**GOLDEN_CALLS[out](inputs), noise=inputs["noise"], randomize_noise=False, return_latents=True)
            expected[out] = image
            if out in GOLDEN_LATENTS:
                expected[GOLDEN_LATENTS[out]] = latent
    if not quick:  # the W+ gradient of the CPU reference path is the standard
        dy = torch.randn(expected["out_wplus"].shape, generator=torch.Generator().manual_seed(0))
        _, reference_grad = wplus_gradient(g_cpu, inputs, dy)

    unavailable = None
    if device.type != "cuda":
        say("golden", f"CUDA paths skipped: {no_cuda_reason()}; checking the CPU paths")
    else:  # built once per process: a no-op after the ops section
        problems = []
        for name, (ref, probe) in op_probes(device).items():
            _, problem = build_and_self_check(name, ref, probe)
            if problem:
                problems.append(f"{name}: {problem}")
        if problems:
            unavailable = "; ".join(problems)
            say("golden", f"compiled ops unavailable, checking the reference-op paths only: {unavailable}")
    g = copy.deepcopy(g_cpu).to(device)
    d = to_device(inputs, device)
    rows = []
    with full_fp32() if device.type == "cuda" else contextlib.nullcontext():
        for label, combo, ops, split in golden_paths(device, quick, compiled=unavailable is None):
            g.set_impl(*combo)
            with ops_mode(ops), (split_per_sample() if split else contextlib.nullcontext()):
                error, ok = 0.0, True
                for out in calls:
                    with torch.no_grad():
                        image, latent = g(**GOLDEN_CALLS[out](d), noise=d["noise"], randomize_noise=False, return_latents=True)
                    pairs = [(image, expected[out])] + ([(latent, expected[GOLDEN_LATENTS[out]])] if out in GOLDEN_LATENTS else [])
                    for got, want in pairs:
                        got = got.float().cpu()
                        if got.shape != want.shape:
                            error, ok = math.inf, False
                            continue
                        error = max(error, (got - want).abs().max().item())
                        ok = ok and torch.allclose(got, want, rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL)
                row = {"path": label, "max_error": error, "ok": bool(ok)}
                if not quick:
                    image, grad = wplus_gradient(g, d, dy.to(device))
                    row["autograd_ok"] = torch.allclose(image.cpu(), expected["out_wplus"], rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL)
                    row["grad_rel_error"] = ((grad.cpu() - reference_grad).abs().max() / reference_grad.abs().max()).item()
                    row["ok"] = bool(row["ok"] and row["autograd_ok"] and row["grad_rel_error"] <= GRADIENT_RTOL)
            rows.append(row)
            if not row["ok"]:
                say("golden", f"MISMATCH on {row['path']}: max error {error:.3g}" + (f", W+ gradient relative error {row['grad_rel_error']:.3g}" if "grad_rel_error" in row else ""))
    failed = [r for r in rows if not r["ok"]]
    worst = max(r["max_error"] for r in rows)
    what = f"{len(calls)} call{'s' if len(calls) > 1 else ''}" + ("" if quick else " + the W+ gradient")
    summary = (f"{len(rows) - len(failed)} of {len(rows)} {device.type.upper()} paths reproduce {against} ({what}): "
               f"max error {worst:.3g} (rtol {GOLDEN_RTOL:g}, atol {GOLDEN_ATOL:g}" + ("" if quick else f"; gradients {GRADIENT_RTOL:g} of max") + ")")
    if device.type == "cuda":
        summary += ", float32 without TF32"
    data_out = {"against": against, "calls": calls, "paths": rows, "max_error": worst}
    if not quick:
        data_out["max_grad_rel_error"] = max(r["grad_rel_error"] for r in rows)
    if unavailable:
        data_out["compiled_ops_unavailable"] = unavailable
        summary += "; compiled ops unavailable (see ops): reference-op paths only"
    return result("fail" if failed else "pass", summary, **data_out)


# --------------------------------------------------------------------------
# 3. Tiny configs end to end, and resume


class Interrupted(Exception):
    """Raised instead of a training step: the run stops there as a killed process would."""


def interrupt_step(total, every):
    """A step past the first checkpoint and before the end, so that a resumed run
    redoes the steps after its last checkpoint; ``None`` when a run is too short."""
    if total < 2:
        return None
    return min(total - 1, every + max(1, (total - every) // 2)) if every < total else total // 2


def stop_stage1_at(backend, step):
    """Make Stage 1 of this backend raise :class:`Interrupted` at ``step``.

    The backend is the stages' only door to the model, so wrapping its pair
    source (the first call of every step) interrupts the unmodified loop.
    """
    make_pairs = backend.stage1_pairs

    def stage1_pairs(*args, **kwargs):
        pairs = make_pairs(*args, **kwargs)
        take = pairs.batch

        def batch(s, device):
            if s == step:
                raise Interrupted(f"stage 1 at step {step}")
            return take(s, device)

        pairs.batch = batch
        return pairs

    backend.stage1_pairs = stage1_pairs


def stop_stage2_at(backend, every):
    """Make Stage 2 of this backend raise :class:`Interrupted` (see :func:`stop_stage1_at`)."""
    make_model = backend.adaptation
    stopped = {}

    def adaptation(*args, **kwargs):
        model = make_model(*args, **kwargs)
        stopped["iterations"] = model.iterations
        stopped["step"] = step = interrupt_step(model.iterations, every)
        take = model.batch

        def batch(s):
            if s == step:
                raise Interrupted(f"stage 2 at step {step}")
            return take(s)

        model.batch = batch
        return model

    backend.adaptation = adaptation
    return stopped


def leaves(obj, prefix=""):
    """``(dotted key, tensor)`` of every tensor in a nested checkpoint."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from leaves(value, f"{prefix}.{i}")


def checkpoint_tensors(path):
    """``{dotted key: tensor}`` of a checkpoint (its config aside), with its step under ``"step"``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} does not hold a checkpoint dict")
    tensors = dict(leaves({k: v for k, v in ckpt.items() if k != "config"}))
    tensors["step"] = torch.tensor(ckpt.get("step", -1))
    return tensors


def differences(a, b):
    """``{key: max |a - b|}`` over the float tensors both hold."""
    return {k: (a[k].double() - b[k].double()).abs().max().item()
            for k in a.keys() & b.keys() if a[k].is_floating_point() and a[k].numel() and a[k].shape == b[k].shape}


def compare_runs(got, want, noise=None):
    """Problems of checkpoint tensors ``got`` against ``want``: bit for bit, or with ``noise``
    (``{key: run-to-run difference}``) within :data:`RESUME_NOISE_FACTOR` of it."""
    problems = []
    if sorted(got) != sorted(want):
        problems.append(f"different tensors: {sorted(set(got) ^ set(want))[:5]}")
    diffs = differences(got, want)
    for key in sorted(got.keys() & want.keys()):
        x, y = got[key], want[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            problems.append(f"{key}: {tuple(x.shape)} {x.dtype} instead of {tuple(y.shape)} {y.dtype}")
        elif key in diffs and noise is not None:
            bound = RESUME_NOISE_FACTOR * noise.get(key, 0.0) + RESUME_FLOOR * max(1.0, y.abs().max().item())
            if not diffs[key] <= bound:
                problems.append(f"{key} differs by {diffs[key]:.3g} (bound {bound:.3g})")
        elif not torch.equal(x, y):  # bit for bit; random states and counters always
            problems.append(f"{key} differs" + (f" by {diffs[key]:.3g}" if key in diffs else ""))
    return problems


def finite_problems(run_dir):
    """Non-finite tensors in the run's checkpoints or non-finite values in its logs."""
    problems = []
    for path in sorted(run_dir.glob("*.pt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        bad = [k for k, t in leaves(ckpt) if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            problems.append(f"{path.name}: non-finite {bad[:3]}")
    for path in sorted(run_dir.glob("stats_*.jsonl")):
        for line in path.read_text().splitlines():
            bad = [k for k, v in json.loads(line).items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                problems.append(f"{path.name}: non-finite {bad}")
    return problems


def run_tiny(config_path, device, quick, workdir, exact=None):
    """One tiny config: uninterrupted, then interrupted in each stage and resumed.

    ``exact`` (default: on the CPU) asks for bit-for-bit equality; otherwise a
    second uninterrupted run measures the run-to-run noise the resumed run is
    held to.
    """
    from ipl.config import load_config
    from ipl.pipeline import Session

    generator_kind = load_config(config_path).generator.kind
    quick_sets = QUICK_STAGE1 + QUICK_TINY[generator_kind] if quick else []

    def config(run):
        sets = [f"device={device.type}", f"run_dir={workdir / run}", f"cache_dir={workdir / ('cache-' + run)}"]
        return load_config(config_path, sets + quick_sets)

    shutil.rmtree(workdir, ignore_errors=True)
    exact = device.type != "cuda" if exact is None else exact
    saved_cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    start = time.perf_counter()
    try:
        full = Session(config("uninterrupted"), progress=False)
        adapted = full.adapt(resume=False)
        c = full.config

        # Interrupted in Stage 1, resumed (and stopped again in Stage 2), resumed.
        events, missed = [], []
        step1 = interrupt_step(c.stage1.iterations, c.stage1.checkpoint_every)
        first = Session(config("resumed"), progress=False)
        if step1 is not None:
            stop_stage1_at(first.backend, step1)
        try:
            first.adapt(resume=True)
            if step1 is not None:
                missed.append(f"stage 1 was not interrupted at step {step1}")
        except Interrupted as e:
            events.append(f"interrupted {e}")
        second = Session(config("resumed"), progress=False)
        stopped = stop_stage2_at(second.backend, c.stage2.checkpoint_every)
        try:
            second.adapt(resume=True)
            if stopped.get("step") is not None:
                missed.append(f"stage 2 was not interrupted at step {stopped['step']}")
        except Interrupted as e:
            events.append(f"interrupted {e}")
        if step1 is None or stopped.get("step") is None:
            events.append("a stage too short to interrupt")
        Session(config("resumed"), progress=False).adapt(resume=True)
        if not exact:  # how far two identical runs drift apart on this device
            Session(config("repeat"), progress=False).adapt(resume=False)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn
    seconds = time.perf_counter() - start

    runs = ["uninterrupted", "resumed"] + ([] if exact else ["repeat"])
    problems = missed + [p for run in runs for p in finite_problems(workdir / run)]
    if not list((workdir / "uninterrupted" / "samples").glob("*.png")):
        problems.append("no sample grid written")
    worst, noise_max, compared = 0.0, 0.0, 0
    for name in ("mapper.pt", "stage2.pt", Path(adapted).name):
        paths = {run: workdir / run / name for run in runs}
        missing = [f"{run}/{name}" for run, p in paths.items() if not p.is_file()]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
            continue
        tensors = {run: checkpoint_tensors(p) for run, p in paths.items()}
        noise = None if exact else differences(tensors["repeat"], tensors["uninterrupted"])
        problems += [f"resumed {name}: {p}" for p in compare_runs(tensors["resumed"], tensors["uninterrupted"], noise)]
        worst = max([worst, *differences(tensors["resumed"], tensors["uninterrupted"]).values()])
        noise_max = max([noise_max, *(noise or {}).values()])
        compared += len(tensors["uninterrupted"])
    if exact:
        rule = "bit for bit"
    else:
        rule = (f"each float tensor within {RESUME_NOISE_FACTOR:g}x its difference between two uninterrupted runs "
                f"(max {noise_max:.3g}) + {RESUME_FLOOR:g} of its scale; cuDNN deterministic")
    steps = f"{c.stage1.iterations} + {stopped['iterations']} steps"
    summary = (f"{steps} in {seconds:.0f} s, finite; {'; '.join(events) or 'not interrupted'}; "
               f"the resumed run's {compared} checkpoint tensors equal the uninterrupted run's ({rule}): max difference {worst:.3g}")
    if problems:
        summary = f"{len(problems)} problem(s): {'; '.join(problems[:4])}"
    return result("fail" if problems else "pass", summary, seconds=round(seconds, 1), events=events, max_difference=worst, run_to_run_difference=None if exact else noise_max, tensors_compared=compared, rule=rule, problems=problems)


def check_tiny(device, quick, out):
    configs, failed = {}, False
    for name in TINY_CONFIGS:
        path = REPO / "configs" / name
        if not path.is_file():
            configs[name] = result("skip", f"not present (configs/{name})")
            say("tiny", f"{name}: not present (configs/{name})")
            continue
        say("tiny", f"{name}: running on {device.type}" + (" (--quick: shortened)" if quick else ""))
        cwd = os.getcwd()
        try:
            os.chdir(REPO)  # the configs' relative paths (e.g. data.images) are the checkout's
            configs[name] = run_tiny(path, device, quick, out / "runs" / path.stem)
        except Exception as e:
            configs[name] = result("fail", f"raised {type(e).__name__}: {e}", traceback=traceback.format_exc())
            traceback.print_exc()
        finally:
            os.chdir(cwd)
        say("tiny", f"{name}: {configs[name]['status']}: {configs[name]['summary']}")
        failed = failed or configs[name]["status"] == "fail"
    ran = [n for n, r in configs.items() if r["status"] != "skip"]
    status = "fail" if failed else ("pass" if ran else "skip")
    return result(status, "; ".join(f"{n}: {r['status']}" for n, r in configs.items()), configs=configs)


# --------------------------------------------------------------------------
# 4. Timing


def with_peak_memory(device, fn):
    """``(fn(), peak GPU memory in GiB during it, models included)``; ``None`` on the CPU."""
    gc.collect()
    if device.type != "cuda":
        return fn(), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    gc.collect()
    torch.cuda.empty_cache()
    return out, peak


def measure_rows(device, plan):
    """Time each ``(key, label, unit, fn)`` of ``plan`` with its peak memory; a failing one is recorded and the others go on.

    Returns:
        ``(rows, errors)``, both keyed by ``key``.
    """
    rows, errors = {}, {}
    for key, label, unit, fn in plan:
        try:
            times, peak = with_peak_memory(device, fn)
        except Exception as e:  # e.g. out of memory: the other rows still tell something
            traceback.print_exc()
            errors[key] = f"{label}: {type(e).__name__}: {e}"
            say("timing", f"{label}: FAILED: {type(e).__name__}: {e}")
            continue
        rows[key] = {"label": label, "unit": unit, "median": statistics.median(times), "min": min(times), "times": times, "peak_gpu_gib": peak}
        say("timing", f"{label}: {rows[key]['median']:.4g} {unit}" + (f", peak GPU memory {peak:.2f} GiB" if peak is not None else ""))
    return rows, errors


def in_temporary_folder(fn):
    """``fn(folder)`` as a function of nothing, run in a fresh temporary folder removed afterwards."""

    def run():
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            return fn(Path(tmp))

    return run


def diffae_timing(device, quick, warmup=1, iters=2):
    """Diff-AE 256 (FFHQ, random weights) + CLIP ViT-B/32: caching an image, a fine-tuning image-step
    (full backward with per-step checkpointing, and the per-step variant), peak GPU memory of each.

    The definitions are those of ``benchmarks/bench_diffae.py`` (:mod:`measurements`);
    on a CPU or with ``--quick``, the tiny autoencoder with short schedules.
    """
    full = device.type == "cuda" and not quick
    spec = dict(arch="ffhq256", clip="random:ViT-B/32") if full else dict(arch="tiny", clip="tiny", n_inv_step=10, n_train_step=4)
    plan = [
        ("diffae_cache_image", f"Diff-AE: encode + invert one image ({spec.get('n_inv_step', 40)} steps)", "s/image",
         in_temporary_folder(lambda tmp: measurements.diffae_cache_times(device, tmp, **spec))),
        ("diffae_finetune", "Diff-AE: fine-tuning image-step, full backward", "s/image-step",
         in_temporary_folder(lambda tmp: measurements.diffae_finetune_times(device, tmp, warmup, iters, **spec))),
        ("diffae_finetune_per_step", "Diff-AE: fine-tuning image-step, per-step variant", "s/image-step",
         in_temporary_folder(lambda tmp: measurements.diffae_finetune_times(device, tmp, warmup, iters, overrides=["diffusionclip.per_step=true"], **spec))),
    ]  # fmt: skip
    rows, errors = measure_rows(device, plan)
    size = "Diff-AE FFHQ-256 + CLIP ViT-B/32 fp16" if full else "tiny Diff-AE 32 px + tiny CLIP"
    if errors:
        return result("fail", f"{size}: {len(errors)} measurement(s) failed: {'; '.join(errors.values())}", rows=rows, errors=errors)
    bad = [k for k, r in rows.items() if not all(math.isfinite(t) and t > 0 for t in r["times"])]
    summary = f"{size}: " + ", ".join(f"{r['label'].split(': ', 1)[1]} {r['median']:.3g} {r['unit']}" for r in rows.values())
    return result("fail" if bad else "pass", summary, size=size, rows=rows)


def check_timing(device, quick, warmup, iters, bank_images):
    full = device.type == "cuda" and not quick
    spec = FULL_SPEC if full else TINY_SPEC
    if device.type != "cuda":
        say("timing", f"full size skipped: {no_cuda_reason()}; timing at tiny size on the CPU (full size on a CPU: benchmarks/bench_stages.py)")
    elif quick:
        say("timing", "--quick: timing at tiny size")
    from ipl.config import GeneratorConfig, Stage1Config, Stage2Config

    chunk = GeneratorConfig().render_chunk
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        plan = [
            ("generator_forward_b1", "generator forward, batch 1", "s/image",
             lambda: measurements.generator_forward_times(device, spec, 1, warmup, iters)),
            (f"generator_forward_b{chunk}", f"generator forward, batch {chunk} (render_chunk)", "s/image",
             lambda: measurements.generator_forward_times(device, spec, chunk, warmup, iters)),
            ("stage1_bank", "Stage 1 from the bank (batch 32)", "s/iter",
             lambda: measurements.stage1_times(device, spec, "bank", warmup, iters, tmp / "stage1")),
            ("bank_build", f"building the bank ({bank_images} images)", "s/image",
             lambda: measurements.bank_build_times(device, spec, bank_images, tmp / "bank", warmup_images=chunk)),
            ("stage2", "Stage 2 (batch 2, layer selection on 8)", "s/iter",
             lambda: measurements.stage2_times(device, spec, warmup, iters, tmp / "stage2")),
        ]
        rows, errors = measure_rows(device, plan)
    if errors:
        return result("fail", f"{len(errors)} measurement(s) failed: {'; '.join(errors.values())}", rows=rows, errors=errors)

    s1, s2 = Stage1Config(), Stage2Config()
    images = s1.iterations * s1.batch
    minutes = {
        "bank": images * rows["bank_build"]["median"] / 60,
        "stage1": s1.iterations * rows["stage1_bank"]["median"] / 60,
        "stage2": s2.iterations * rows["stage2"]["median"] / 60,
    }
    projection = {
        "steps": f"{s1.iterations} + {s2.iterations}",
        "bank_images": images,
        "minutes": minutes,
        "total_minutes": sum(minutes.values()),
        "total_minutes_bank_cached": minutes["stage1"] + minutes["stage2"],
        "paper": PAPER_TIME,
    }
    bad = [k for k, r in rows.items() if not all(math.isfinite(t) and t > 0 for t in r["times"])]
    size = "StyleGAN2 1024 + CLIP ViT-B/32 fp16" if full else "tiny StyleGAN2 32 px + tiny CLIP (not comparable with the paper)"
    summary = (f"{size}: {s1.iterations} + {s2.iterations} steps project to {projection['total_minutes']:.1f} min "
               f"({projection['total_minutes_bank_cached']:.1f} min with the bank cached); the paper: {PAPER_TIME}")
    diffae = diffae_timing(device, quick)
    if diffae["status"] == "fail":
        bad.append("diffae")
    return result("fail" if bad else "pass", summary, size=size, full_size=full, rows=rows, projection=projection, diffae=diffae)


# --------------------------------------------------------------------------
# Report


def cell(text):
    """``text`` as one markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report):
    env = report["environment"]
    lines = [f"# gpu_check: {'PASS' if report['ok'] else 'FAIL'}", ""]
    if "gpu" in env:
        lines.append(f"GPU: {env['gpu']} ({env['gpu_memory_gib']} GiB, compute capability {env['compute_capability']}, {env['gpu_count']} visible), driver {env['driver']}  ")
    else:
        lines.append("GPU: none (CPU only)  ")
    lines += [
        f"torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), Python {env['python']}, nvcc: {env['nvcc'] or 'not found'}, ninja: {env['ninja'] or 'not found'}  ",
        f"CPU: {env['cpu']}, {env['cpus']} logical CPUs, {env['threads']} threads; {env['host']}, {env['date']}  ",
        f"`{report['command']}`",
        "",
        "| section | result | summary |",
        "|---|---|---|",
    ]
    for name, section in report["sections"].items():
        lines.append(f"| {name} | {section['status']} | {cell(section['summary'])} |")
        for sub, r in section.get("configs", {}).items():
            lines.append(f"| {name}: {sub} | {r['status']} | {cell(r['summary'])} |")
        if "diffae" in section:
            lines.append(f"| {name}: Diff-AE | {section['diffae']['status']} | {cell(section['diffae']['summary'])} |")
    timing = report["sections"].get("timing", {})
    if timing.get("rows"):
        lines += ["", f"## Timing: {timing.get('size', 'StyleGAN2')}, random weights", "",
                  "| measurement | median | min | unit | peak GPU memory (GiB) |", "|---|---|---|---|---|"]
        for r in [*timing["rows"].values(), *timing.get("diffae", {}).get("rows", {}).values()]:
            peak = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f}"
            lines.append(f"| {r['label']} | {r['median']:.4g} | {r['min']:.4g} | {r['unit']} | {peak} |")
    if timing.get("projection"):
        p = timing["projection"]
        m = p["minutes"]
        lines += ["", (f"Projected {p['steps']} steps: bank ({p['bank_images']:,} images, once per source generator) {m['bank']:.1f} min, "
                       f"Stage 1 {m['stage1']:.1f} min, Stage 2 {m['stage2']:.1f} min: **{p['total_minutes']:.1f} min** "
                       f"({p['total_minutes_bank_cached']:.1f} min with the bank cached). The paper: {p['paper']}.")]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check_out", help="folder of gpu_check.json, gpu_check.md and the tiny runs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short runs everywhere (CI's CPU path)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections among {','.join(SECTIONS)}")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--warmup", type=cli.int_at_least(0), default=1, help="timing: untimed steps first")
    parser.add_argument("--iters", type=cli.int_at_least(1), default=3, help="timing: timed steps or calls")
    parser.add_argument("--bank-images", type=cli.int_at_least(1), default=16, help="timing: images of the timed bank build")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose among {', '.join(SECTIONS)}")

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda, but torch sees no CUDA device")
    out = Path(args.out).resolve()  # the tiny runs change the working directory
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    say("env", f"{env.get('gpu', 'no GPU')}, torch {env['torch']} (CUDA {env['torch_cuda']}), Python {env['python']}")
    if args.quick:
        iters, warmup, bank_images = 2, 1, 4
    else:
        iters, warmup, bank_images = args.iters, args.warmup, args.bank_images

    checks = {
        "ops": lambda: check_ops(device, args.quick),
        "golden": lambda: check_golden(device, args.quick),
        "tiny": lambda: check_tiny(device, args.quick, out),
        "timing": lambda: check_timing(device, args.quick, warmup, iters, bank_images),
    }
    sections = {}
    for name in SECTIONS:
        if name not in only:
            continue
        start = time.perf_counter()
        try:
            sections[name] = checks[name]()
        except Exception as e:  # one broken section must not hide the others' results
            traceback.print_exc()
            sections[name] = result("fail", f"raised {type(e).__name__}: {e}", traceback=traceback.format_exc())
        sections[name]["seconds"] = round(time.perf_counter() - start, 1)
        say(name, f"{sections[name]['status'].upper()}: {sections[name]['summary']}")

    report = {
        "format": 1,
        "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
        "quick": args.quick,
        "ok": not any(s["status"] == "fail" for s in sections.values()),
        "environment": env,
        "sections": sections,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print("\n" + text)
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    if not report["ok"]:
        sys.exit(1)  # a failed check: the table says which


if __name__ == "__main__":
    cli.run(main)
