from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures():
    """The reference data of the tests (``tests/fixtures``, part of the repository)."""
    return FIXTURES


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
