import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir():
    """The reference data folder that CI places beside the checkout."""
    return Path(os.environ.get("IPL_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared():
    path = shared_dir()
    if not (path / "fixtures").is_dir():
        pytest.fail(
            f"reference fixtures not found at {path}/fixtures: these tests need the "
            "'shared' folder beside the checkout (or IPL_SHARED pointing at it)"
        )
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """No weights directory, environment variable or torch.hub cache from the machine."""
    from ipl.metrics.weights import WEIGHTS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(tmp_path / "weights"))
    for entry in WEIGHTS.values():
        monkeypatch.delenv(entry.env_var, raising=False)
