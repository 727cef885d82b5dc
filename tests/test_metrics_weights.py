"""Weight registry: lookup order, clear errors for missing files, verified downloads."""

import hashlib

import pytest
import torch

from ipl.metrics import WEIGHTS, MissingWeightsError, WeightFile, download_weights, load_hed, resolve_weights
from ipl.metrics.weights import load_state_dict_file, load_strict


pytestmark = pytest.mark.usefixtures("isolated_weights")  # no weight file of this machine is seen


def test_every_network_file_is_registered_with_a_source_and_a_loader():
    for key in ("inception_v3", "hed_bsds500", "arcface_ir_se50", "lpips_vgg", "lpips_alex", "fid_inception_v3"):
        entry = WEIGHTS[key]
        assert entry.filename and entry.source and entry.loader and entry.env_var.startswith("IPL_")
        if entry.sha256_prefix:  # publishers that encode the hash put it in the file name
            assert f"-{entry.sha256_prefix}." in entry.filename


def test_missing_file_error_says_where_to_get_it_and_how_to_point_to_it():
    with pytest.raises(MissingWeightsError) as error:
        resolve_weights("inception_v3")
    message = str(error.value)
    for fact in ("inception_v3_google-0cc3c7bd.pth", WEIGHTS["inception_v3"].url, "IPL_INCEPTION_WEIGHTS",
                 "load_inception", "download=True"):
        assert fact in message
    with pytest.raises(MissingWeightsError, match="Google Drive"):
        resolve_weights("arcface_ir_se50")


def test_a_wrong_explicit_path_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "network-bsds500.pytorch").write_bytes(b"x")
    with pytest.raises(MissingWeightsError, match="path argument points to"):
        resolve_weights("hed_bsds500", tmp_path / "nowhere.pth")
    monkeypatch.setenv("IPL_HED_WEIGHTS", str(tmp_path / "nowhere.pth"))
    with pytest.raises(MissingWeightsError, match=r"\$IPL_HED_WEIGHTS"):
        resolve_weights("hed_bsds500")


def test_lookup_order_is_path_then_env_var_then_weights_dir_then_hub_cache(tmp_path, monkeypatch):
    name = WEIGHTS["hed_bsds500"].filename
    hub = tmp_path / "torch_home" / "hub" / "checkpoints" / name
    in_dir = tmp_path / "weights" / name
    env, explicit = tmp_path / "env.pth", tmp_path / "explicit.pth"
    for file in (hub, in_dir, env, explicit):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"x")
    monkeypatch.setenv("IPL_HED_WEIGHTS", str(env))
    assert resolve_weights("hed_bsds500", explicit) == explicit
    assert resolve_weights("hed_bsds500") == env
    monkeypatch.delenv("IPL_HED_WEIGHTS")
    assert resolve_weights("hed_bsds500") == in_dir
    in_dir.unlink()
    assert resolve_weights("hed_bsds500") == hub


def local_entry(tmp_path, payload, prefix):
    source = tmp_path / "served" / "weights.pth"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(payload)
    return WeightFile(
        key="test_file", filename=f"weights-{prefix}.pth", description="test", env_var="IPL_TEST_WEIGHTS",
        loader="load_test", source="test", url=source.as_uri(), sha256_prefix=prefix,
    )


def test_download_checks_the_sha256_prefix(tmp_path):
    payload = b"weights" * 1000
    good = hashlib.sha256(payload).hexdigest()[:8]
    path = resolve_weights(local_entry(tmp_path, payload, good), download=True, weights_dir=tmp_path / "dl")
    assert path == tmp_path / "dl" / f"weights-{good}.pth" and path.read_bytes() == payload

    bad = "00000000" if good != "00000000" else "11111111"
    with pytest.raises(RuntimeError, match="(?i)hash"):
        download_weights(local_entry(tmp_path, payload, bad), tmp_path / "dl2", progress=False)
    assert not any((tmp_path / "dl2").iterdir())  # nothing half-written is left behind


def test_state_dict_files_may_be_wrapped_or_saved_from_data_parallel(tmp_path):
    state = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    loaded = load_state_dict_file(tmp_path / "wrapped.pth")
    assert loaded.keys() == state.keys()
    torch.save({"step": 3, "note": "not weights"}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="state dict of tensors"):
        load_state_dict_file(tmp_path / "other.pth")


def test_a_file_of_another_architecture_names_the_mismatch(tmp_path):
    torch.save({"netVggOne.0.weight": torch.zeros(64, 3, 5, 5)}, tmp_path / "network-bsds500.pytorch")
    with pytest.raises(RuntimeError, match="missing keys.*\n.*wrong shapes: netVggOne.0.weight"):
        load_hed(tmp_path / "network-bsds500.pytorch")


def test_load_strict_tolerates_files_without_batchnorm_step_counters():
    module = torch.nn.BatchNorm2d(4)
    state = {k: v for k, v in module.state_dict().items() if k != "num_batches_tracked"}
    load_strict(module, state, "BatchNorm2d")
    with pytest.raises(RuntimeError, match="missing keys: running_var"):
        load_strict(module, {k: v for k, v in state.items() if k != "running_var"}, "BatchNorm2d")
