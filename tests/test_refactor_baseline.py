"""StyleGAN2 results do not move: short runs equal the recorded ones, on any CPU.

Every prompt scheme and both Stage-1 image modes (6 + 4 steps), trained again
and compared with tests/fixtures/stylegan2_runs.pt within a tolerance
measured across CPUs, kernels and thread counts (tests/helpers.py,
tests/fixtures/README.md). The demo config's recorded first 10 + 10 steps are
checked by tests/test_pipeline.py, which trains them through scripts/adapt.py.
"""

import importlib.util

import pytest
import torch
from helpers import RECORDED_RUN_TOLERANCE, REPO, assert_matches_recorded_run, recorded_difference


def _recorder():
    # Loaded from its file: putting tests/fixtures on sys.path would let its
    # stylegan2/ data folder shadow the stylegan2 package.
    spec = importlib.util.spec_from_file_location("record_stylegan2_runs", REPO / "tests" / "fixtures" / "record_stylegan2_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDER = _recorder()


SMALL_RUNS = [name for name, (path, _) in RECORDER.RUNS.items() if path is None]


@pytest.mark.parametrize("name", SMALL_RUNS)
def test_stylegan2_run_matches_the_recorded_one(name, tmp_path):
    record = RECORDER.train(name, tmp_path)
    assert_matches_recorded_run(name, record["generator"], "generator")
    if name in ("manual", "random"):
        assert "mapper" not in record  # no Stage 1 for these schemes
    else:
        assert_matches_recorded_run(name, record["mapper"], "mapper")


def test_the_recorded_runs_lie_far_beyond_the_tolerance_from_each_other():
    # Otherwise the comparison could not tell the prompt schemes apart. The
    # closest pair, the same latents rendered into the bank or fresh (only the
    # noise draws differ), lies 5e-3 apart: over thirty times the tolerance.
    runs = torch.load(REPO / "tests" / "fixtures" / "stylegan2_runs.pt", weights_only=True)["runs"]
    for i, a in enumerate(SMALL_RUNS):
        for b in SMALL_RUNS[i + 1 :]:
            largest = max(recorded_difference(runs[a]["generator"][k], runs[b]["generator"][k]) for k in runs[b]["generator"])
            assert largest > 30 * RECORDED_RUN_TOLERANCE, (a, b, largest)
