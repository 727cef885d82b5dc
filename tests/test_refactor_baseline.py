"""StyleGAN2 results do not move: runs equal the ones recorded before the code was restructured.

The demo config's run is checked by tests/test_pipeline.py (it trains that
run anyway); here, the smaller runs of every prompt scheme and both Stage-1
image modes.
"""

import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, assert_matches_recorded_run

sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from record_stylegan2_runs import RUNS, train  # noqa: E402

SMALL_RUNS = [name for name, (path, _) in RUNS.items() if path is None]


@pytest.mark.parametrize("name", SMALL_RUNS)
def test_stylegan2_run_is_bit_identical_to_the_recorded_one(name, tmp_path):
    record = train(name, Path(tmp_path))
    assert_matches_recorded_run(name, record["generator"], "generator")
    if name in ("manual", "random"):
        assert "mapper" not in record  # no Stage 1 for these schemes
    else:
        assert_matches_recorded_run(name, record["mapper"], "mapper")


def test_the_recorded_runs_differ_from_each_other():
    # Otherwise a comparison against them would not tell the schemes apart.
    runs = torch.load(REPO / "tests" / "fixtures" / "stylegan2_runs.pt", weights_only=True)["runs"]
    key = "convs.0.conv.weight"
    small = [runs[n]["generator"][key] for n in SMALL_RUNS]
    assert all(not torch.equal(a, b) for i, a in enumerate(small) for b in small[i + 1 :])
