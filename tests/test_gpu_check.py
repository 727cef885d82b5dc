"""benchmarks/gpu_check.py on a CPU: its quick path end to end (the CUDA parts
skipped, one line each), its report, a wrong op turning it red, and the
comparisons its GPU-only parts rest on."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def run(args, cwd, script=SCRIPT):
    # Tiny models on a shared CPU: one thread is several times faster than two
    # contending ones (README, Speed). --device cpu: the CPU path even where a
    # GPU is visible.
    env = {k: v for k, v in os.environ.items() if k != "IPL_OPS"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(script), "--quick", "--device", "cpu", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=900,
    )


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("gpu_check")
    out = cwd / "report"
    done = run(["--out", "report"], cwd=cwd)  # relative to where it is started, as typed
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else None
    return done, out, report


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow  # one quick run of every section: 30-60 s on a shared 2-core CPU
def test_quick_check_passes_on_a_cpu_and_skips_the_cuda_parts_in_one_line_each(quick):
    done, out, _ = quick
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    cuda = "--device cpu" if torch.cuda.is_available() else "no CUDA device"
    assert f"[ops] SKIP: {cuda} (the compiled ops run only on a GPU)" in lines
    assert f"[golden] CUDA paths skipped: {cuda}; checking the CPU paths" in lines
    assert any(line.startswith(f"[timing] full size skipped: {cuda}; timing at tiny size") for line in lines)
    assert (out / "gpu_check.md").read_text() in done.stdout  # the table is printed too


@pytest.mark.slow
def test_quick_report_has_every_section_with_finite_numbers(quick):
    _, out, report = quick
    assert report is not None and report["ok"] and report["quick"]
    assert list(report["sections"]) == ["ops", "golden", "tiny", "timing"]
    assert {"torch", "python", "cpu", "device"} <= set(report["environment"])
    s = report["sections"]
    assert s["ops"]["status"] == "skip"

    golden = s["golden"]
    assert golden["status"] == "pass" and golden["against"].startswith("the fixture ")  # tests/fixtures is in the repository
    assert len(golden["paths"]) >= 9 and all(p["ok"] for p in golden["paths"])
    assert finite(golden["max_error"]) and golden["max_error"] < 1e-3

    tiny = s["tiny"]["configs"]["tiny.yaml"]
    assert tiny["status"] == "pass", tiny["summary"]
    assert tiny["max_difference"] == 0 and tiny["tensors_compared"] > 100  # bit for bit on the CPU
    assert [e.split(" at ")[0] for e in tiny["events"]] == ["interrupted stage 1", "interrupted stage 2"]
    diffae = s["tiny"]["configs"]["tiny_diffae.yaml"]
    assert diffae["status"] == "pass", diffae["summary"]
    assert diffae["max_difference"] == 0 and diffae["tensors_compared"] > 100
    assert (out / "runs" / "tiny" / "resumed" / "generator.pt").is_file()

    timing = s["timing"]
    assert timing["status"] == "pass" and not timing["full_size"]
    assert set(timing["rows"]) == {"generator_forward_b1", "generator_forward_b4", "stage1_bank", "bank_build", "stage2"}
    for row in timing["rows"].values():
        assert all(finite(t) and t > 0 for t in row["times"]) and row["peak_gpu_gib"] is None
    projection = timing["projection"]
    assert finite(projection["total_minutes"]) and projection["bank_images"] == 300 * 32
    diffae_timing = timing["diffae"]
    assert diffae_timing["status"] == "pass", diffae_timing["summary"]
    assert set(diffae_timing["rows"]) == {"diffae_cache_image", "diffae_finetune", "diffae_finetune_per_step"}
    assert all(finite(t) and t > 0 for row in diffae_timing["rows"].values() for t in row["times"])


@pytest.mark.slow  # the golden section alone: 10-25 s
def test_a_wrong_reference_op_makes_the_check_exit_non_zero(tmp_path):
    # upfirdn2d 1% off: the CPU paths that filter with it (resample=ref or
    # epilogue=ref) must fail, those that filter by depthwise convolution pass.
    launcher = tmp_path / "broken_upfirdn2d.py"
    launcher.write_text(textwrap.dedent(f"""
        import importlib, runpy, sys
        module = importlib.import_module("stylegan2.ops.upfirdn2d")  # the module, not the function
        reference = module.upfirdn2d_ref
        module.upfirdn2d_ref = lambda *args: reference(*args) * 1.01
        sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]
        runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
    """))
    done = run(["--only", "golden", "--out", str(tmp_path / "out")], cwd=tmp_path, script=launcher)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert not report["ok"] and list(report["sections"]) == ["golden"]
    paths = {p["path"]: p["ok"] for p in report["sections"]["golden"]["paths"]}
    assert {name for name, ok in paths.items() if ok} == {
        "grouped-fast-fused", "shared-fast-fused", "auto-fast-fused", "auto-fast-fused per-sample split"}
    assert "[golden] FAIL:" in done.stdout and "MISMATCH on grouped-ref-ref" in done.stdout


# --------------------------------------------------------------------------
# The comparisons behind the GPU-only parts, on CPU tensors.


def test_op_comparison_accepts_the_reference_and_flags_wrong_values_or_gradients():
    from stylegan2 import Generator
    from stylegan2.ops import fused_leaky_relu_ref, upfirdn2d_ref

    gc = load_gpu_check()
    refs = {"upfirdn2d": upfirdn2d_ref, "fused_bias_act": fused_leaky_relu_ref}
    cases = gc.generator_op_cases(Generator(32, 32, 2, channel_multiplier=1, channel_max=8), batch=1)
    assert {c.op for c in cases} == set(refs) and len(cases) == 2 + 6 * 3
    cpu, generator = torch.device("cpu"), torch.Generator().manual_seed(0)
    for case in cases:  # every case's arguments are valid for its op
        assert gc.compare_op(refs[case.op], refs[case.op], case, cpu, generator)["ok"], case.label

    blur = next(c for c in cases if c.label.startswith("blur after"))
    wrong_value = lambda x, *rest: upfirdn2d_ref(x, *rest) * 1.001  # noqa: E731
    wrong_gradient = lambda x, *rest: upfirdn2d_ref(2 * x - x.detach(), *rest)  # noqa: E731  (same value, twice the gradient)
    r = gc.compare_op(wrong_value, upfirdn2d_ref, blur, cpu, generator)
    assert not r["ok"] and r["what"] == "output" and r["error"] > r["bound"]
    r = gc.compare_op(wrong_gradient, upfirdn2d_ref, blur, cpu, generator)
    assert not r["ok"] and r["what"].startswith("gradient")


def test_build_and_self_check_passes_a_right_op_and_reports_a_wrong_one(monkeypatch):
    # The compiled op's stand-in: its autograd wrapper on a pure-PyTorch kernel
    # (the self-check runs on any device), right, then 1% off.
    from stylegan2.ops import _extension, _upfirdn2d_cuda, upfirdn2d_ref

    gc = load_gpu_check()
    ref, probe = gc.op_probes(torch.device("cpu"))["upfirdn2d"]
    right = _extension.LazyOp("upfirdn2d", lambda: _upfirdn2d_cuda.make_op(upfirdn2d_ref), _upfirdn2d_cuda.check_inputs)
    monkeypatch.setitem(_extension._OPS, "upfirdn2d", right)
    op, problem = gc.build_and_self_check("upfirdn2d", ref, probe)
    assert problem is None and op is not None

    wrong_kernel = lambda *args: upfirdn2d_ref(*args) * 1.01  # noqa: E731
    wrong = _extension.LazyOp("upfirdn2d", lambda: _upfirdn2d_cuda.make_op(wrong_kernel), _upfirdn2d_cuda.check_inputs)
    monkeypatch.setitem(_extension._OPS, "upfirdn2d", wrong)
    op, problem = gc.build_and_self_check("upfirdn2d", ref, probe)
    assert op is None and "disagrees with the reference" in problem
    assert "disagrees with the reference" in gc.build_and_self_check("upfirdn2d", ref, probe)[1]  # remembered, not rebuilt


def test_generator_op_cases_cover_every_resolution_of_the_1024_generator():
    from stylegan2 import Generator

    gc = load_gpu_check()
    cases = gc.generator_op_cases(Generator(1024, 32, 2, channel_multiplier=2), batch=2)
    upsampled = [c.shape for c in cases if c.label.startswith("blur after")]
    assert [s[-1] - 1 for s in upsampled] == [2**r for r in range(3, 11)]
    assert (2, 32, 1025, 1025) in upsampled  # the 1024 px layer, config-f widths


def test_resume_comparison_is_bit_for_bit_or_within_the_measured_run_to_run_noise():
    gc = load_gpu_check()
    want = {"w": torch.tensor([1.0, 2.0]), "rng": torch.tensor([1, 2], dtype=torch.uint8), "step": torch.tensor(4)}
    same = {k: v.clone() for k, v in want.items()}
    nudged = {**same, "w": torch.tensor([1.0, 2.0 + 1e-5])}
    assert gc.compare_runs(same, want) == []
    assert gc.compare_runs(nudged, want) == ["w differs by 1e-05"]
    # with noise (CUDA): within 10x the run-to-run difference of that tensor
    assert gc.compare_runs(nudged, want, noise={"w": 2e-6}) == []
    assert gc.compare_runs(nudged, want, noise={"w": 0.0})  # no noise measured: only the floor
    wrong_rng = {**same, "rng": torch.tensor([1, 3], dtype=torch.uint8)}
    assert gc.compare_runs(wrong_rng, want, noise={"w": 1.0}) == ["rng differs"]  # never a tolerance on random states
    assert gc.interrupt_step(100, 50) == 75 and gc.interrupt_step(6, 3) == 4 and gc.interrupt_step(1, 1) is None


def test_golden_inputs_made_by_the_fill_rule_are_the_fixtures(fixtures):
    # gpu_check's stand-in when the fixture is missing: the same inputs, by the README's rule.
    from stylegan2.golden import golden_generator, golden_inputs

    data = torch.load(fixtures / "stylegan2" / "golden_64_cm1.pt", weights_only=True)
    made = golden_inputs(golden_generator(data["size"], data["channel_multiplier"]))
    for name in ("z", "z2", "w", "wplus"):
        assert torch.equal(made[name], data[name]), name
    torch.testing.assert_close(made["truncation_mean_w"], data["truncation_mean_w"])
    assert [n.shape for n in made["noise"]] == [n.shape for n in data["noise"]]
