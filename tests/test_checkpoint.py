"""Generator checkpoints: round trips, the reference port's format, and every error path."""

import argparse
import json
import os
import pickle
import sys
import types

import pytest
import torch

from stylegan2 import CheckpointError, Generator, load_generator, save_generator
from stylegan2.checkpoint import CHECKPOINT_FORMAT, infer_generator_config, read_checkpoint

from helpers import golden_fill

TINY = dict(size=32, style_dim=32, n_mlp=2, channel_max=16)


def tiny_generator(seed=0, **overrides):
    torch.manual_seed(seed)
    g = Generator(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # non-zero noise strengths and biases, so every tensor matters
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight", "activate.bias", ".bias")) and "modulation" not in name:
                p.normal_(0, 0.3)
    return g


def render(g, seed=1):
    z = torch.randn(2, g.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g([z], randomize_noise=False)[0]


def reference_checkpoint(path, generator, latent_avg=None, **more):
    """A file in the reference port's layout: no config, no format tag."""
    torch.save({"g_ema": generator.state_dict(), "latent_avg": latent_avg, **more}, path)
    return path


# ----------------------------------------------------------------------------
# Round trips


def test_save_then_load_gives_the_same_generator_and_info(tmp_path):
    g = tiny_generator()
    latent_avg = torch.randn(TINY["style_dim"])
    path = save_generator(
        tmp_path / "sub" / "g.pt", g, latent_avg=latent_avg, meta={"source": "unit"}, step=7, config={"lr": 0.002}
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.pt"]  # atomic: no temporary left behind

    loaded, info = load_generator(path)
    assert torch.equal(render(loaded), render(g))
    assert torch.equal(info["latent_avg"], latent_avg)
    assert info["config"] == g.config
    assert info["meta"] == {"source": "unit"}
    assert info["path"] == str(path)
    assert info["format"] == CHECKPOINT_FORMAT
    assert info["extra"] == {"step": 7, "config": {"lr": 0.002}}
    assert not loaded.training


def test_saved_file_is_plain_data_in_the_reference_layout(tmp_path):
    g = tiny_generator()
    save_generator(tmp_path / "g.pt", g)
    raw = torch.load(tmp_path / "g.pt", map_location="cpu", weights_only=True)  # no allow-list needed
    assert raw["format"] == CHECKPOINT_FORMAT and raw["generator"] == g.config and raw["latent_avg"] is None
    assert list(raw["g_ema"]) == list(g.state_dict())
    Generator(**raw["generator"]).load_state_dict(raw["g_ema"], strict=True)  # what other tools do


def test_save_refuses_reserved_and_non_plain_extras(tmp_path):
    g = tiny_generator()
    with pytest.raises(ValueError, match="reserved"):
        save_generator(tmp_path / "g.pt", g, g_ema={})
    with pytest.raises(TypeError, match=r"config.*Namespace.*asdict"):
        save_generator(tmp_path / "g.pt", g, config=argparse.Namespace(lr=1))
    assert not (tmp_path / "g.pt").exists()


def test_reference_port_file_loads_with_inferred_config(tmp_path):
    g = tiny_generator(channel_multiplier=2)
    latent_avg = torch.randn(1, TINY["style_dim"])
    ns = argparse.Namespace(size=32, channel_multiplier=2, n_mlp=2, latent=32, iter=10)
    path = reference_checkpoint(
        tmp_path / "ref.pt", g, latent_avg, g=g.state_dict(), d={"final_linear.0.weight": torch.zeros(1, 4)},
        g_optim={"state": {}, "param_groups": []}, d_optim={"state": {}, "param_groups": []}, args=ns,
    )
    loaded, info = load_generator(path)
    assert info["config"] == g.config
    assert info["format"] == "reference"
    assert info["meta"] == {}
    assert info["extra"]["args"]["iter"] == 10
    assert torch.equal(info["latent_avg"], latent_avg)
    assert torch.equal(render(loaded), render(g))


@pytest.fixture
def torch_2_4(monkeypatch):
    """torch.serialization as torch 2.4 has it: no scoped ``safe_globals``, only the process-wide list."""
    saved = torch.serialization.get_safe_globals()
    monkeypatch.delattr(torch.serialization, "safe_globals", raising=False)
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def test_reference_port_file_with_its_options_loads_on_torch_2_4(tmp_path, torch_2_4):
    g = tiny_generator()
    path = reference_checkpoint(tmp_path / "ref.pt", g, torch.zeros(1, TINY["style_dim"]), args=argparse.Namespace(iter=7))
    loaded, info = load_generator(path)
    assert info["extra"]["args"]["iter"] == 7 and torch.equal(render(loaded), render(g))
    assert argparse.Namespace in torch.serialization.get_safe_globals()


def test_bare_state_dict_loads(tmp_path):
    g = tiny_generator()
    torch.save(g.state_dict(), tmp_path / "sd.pt")
    loaded, info = load_generator(tmp_path / "sd.pt")
    assert info["latent_avg"] is None and info["format"] == "state_dict"
    assert torch.equal(render(loaded), render(g))


def test_channel_multiplier_below_64_defaults_to_2_and_builds_the_same_network(tmp_path):
    # At 32x32 every layer has min(512, channel_max) channels whatever the multiplier.
    g = tiny_generator(channel_multiplier=1)
    loaded, info = load_generator(reference_checkpoint(tmp_path / "ref.pt", g))
    assert info["config"]["channel_multiplier"] == 2
    assert torch.equal(render(loaded), render(g))


@pytest.mark.parametrize("manifest", ["1024_cm2", "512_cm2", "256_cm2", "256_cm1"])
def test_config_inferred_from_the_reference_manifests(fixtures, manifest):
    data = json.loads((fixtures / "stylegan2" / f"generator_keys_{manifest}.json").read_text())
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in data["state_dict"]}
    config = infer_generator_config(state)
    for key in ("size", "style_dim", "n_mlp", "channel_multiplier"):
        assert config[key] == data[key], key
    with torch.device("meta"):
        built = Generator(**config).state_dict()
    assert [(k, tuple(v.shape)) for k, v in built.items()] == [(e["key"], tuple(e["shape"])) for e in data["state_dict"]]


def test_reference_port_file_of_the_golden_network_reproduces_its_outputs(fixtures, tmp_path):
    golden = torch.load(fixtures / "stylegan2" / "golden_64_cm1.pt", weights_only=True)
    template = Generator(64, 512, 8, channel_multiplier=1)
    state = template.state_dict()
    for name, _ in template.named_parameters():
        state[name] = golden_fill(name, tuple(state[name].shape))
    torch.save({"g_ema": state, "latent_avg": golden["truncation_mean_w"][0]}, tmp_path / "golden.pt")

    g, info = load_generator(tmp_path / "golden.pt")
    assert info["config"]["channel_multiplier"] == 1  # read from the 64x64 layers
    with torch.no_grad():
        out = g([golden["w"]], input_is_latent=True, noise=golden["noise"], randomize_noise=False)[0]
        trunc = g([golden["z"]], truncation=0.7, truncation_latent=info["latent_avg"][None],
                  noise=golden["noise"], randomize_noise=False)[0]
    torch.testing.assert_close(out, golden["out_w"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(trunc, golden["out_trunc07"], rtol=1e-4, atol=1e-3)


def test_device_argument_moves_generator_and_latent(tmp_path):
    g = tiny_generator()
    save_generator(tmp_path / "g.pt", g, latent_avg=torch.zeros(TINY["style_dim"]))
    loaded, info = load_generator(tmp_path / "g.pt", device=torch.device("meta"))
    assert loaded.input.input.device.type == "meta" and info["latent_avg"].device.type == "meta"


# ----------------------------------------------------------------------------
# Errors


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_generator(tmp_path / "nope.pt")


def test_missing_registry_model_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.delenv("IPL_PRETRAINED_DIR", raising=False)
    with pytest.raises(CheckpointError) as e:
        load_generator("ffhq", pretrained_dir=tmp_path)
    assert f"python scripts/download_pretrained.py ffhq --dir {tmp_path}" in str(e.value)
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"python scripts/download_pretrained.py afhqdog(\s|$)"):
        load_generator("afhqdog")
    with pytest.raises(CheckpointError, match="python scripts/download_pretrained.py metfaces"):
        load_generator(tmp_path / "metfaces.pt")


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_truncated_or_corrupt_file_is_a_clear_error(tmp_path, damage):
    save_generator(tmp_path / "g.pt", tiny_generator())
    data = (tmp_path / "g.pt").read_bytes()
    broken = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(4096)}[damage]
    (tmp_path / "bad.pt").write_bytes(broken)
    with pytest.raises(CheckpointError, match="truncated|corrupt|empty"):
        load_generator(tmp_path / "bad.pt")


class _Exploit:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_pickle_needing_code_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "ran"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"g_ema": _Exploit(sentinel)}, f)
    with pytest.raises(CheckpointError, match=r"system.*convert_nvidia_pkl\.py"):
        load_generator(tmp_path / "evil.pt")
    assert not sentinel.exists()


def test_nvidia_pickle_is_refused_with_the_converter_command(tmp_path, monkeypatch):
    sentinel = tmp_path / "ran"

    def _reconstruct_persistent_obj(meta):  # stands for NVIDIA's hook, which would exec module_src
        sentinel.write_text("hook ran")

    hook_module = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = hook_module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    hook_module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", hook_module)

    class Network:
        def __reduce__(self):
            return (_reconstruct_persistent_obj, (dict(type="class", module_src="raise SystemExit", state={}),))

    with open(tmp_path / "ffhq.pkl", "wb") as f:
        pickle.dump({"G_ema": Network(), "w": torch.ones(3)}, f)
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "ffhq.pkl")
    message = str(e.value)
    assert "NVIDIA network pickle" in message and "torch_utils.persistence._reconstruct_persistent_obj" in message
    assert "python scripts/convert_nvidia_pkl.py" in message
    assert not sentinel.exists()


def test_other_architecture_names_first_mismatching_key_and_both_shapes(tmp_path):
    state = tiny_generator().state_dict()
    state["convs.3.conv.weight"] = torch.zeros(1, 16, 8, 3, 3)
    torch.save({"g_ema": state}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"'convs\.3\.conv\.weight'.*\(1, 16, 16, 3, 3\).*\(1, 16, 8, 3, 3\)"):
        load_generator(tmp_path / "other.pt")


def test_foreign_state_dict_names_a_key(tmp_path):
    torch.save({"g_ema": {"encoder.0.weight": torch.zeros(8, 3)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"key 'style\.1\.weight': our generator has shape \(512, 512\), the file has no such key"):
        load_generator(tmp_path / "foreign.pt")


def test_config_that_contradicts_the_tensors_is_reported(tmp_path):
    save_generator(tmp_path / "g.pt", tiny_generator())
    raw = torch.load(tmp_path / "g.pt", weights_only=True)
    raw["generator"]["size"] = 64
    torch.save(raw, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"Generator\(size=64.*'convs\.6\.conv\.weight'.*no such key"):
        load_generator(tmp_path / "g.pt")


def test_unknown_or_newer_format_is_reported(tmp_path):
    save_generator(tmp_path / "g.pt", tiny_generator())
    raw = torch.load(tmp_path / "g.pt", weights_only=True)
    raw["generator"]["depth"] = 3
    torch.save(raw, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match=r"unknown keys \['depth'\]"):
        load_generator(tmp_path / "unknown.pt")
    raw["format"] = CHECKPOINT_FORMAT + 1
    torch.save(raw, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_generator(tmp_path / "newer.pt")


def test_blur_kernel_that_differs_is_reported(tmp_path):
    state = tiny_generator().state_dict()
    state["convs.2.conv.blur.kernel"] = torch.full((4, 4), 1 / 4)
    torch.save({"g_ema": state}, tmp_path / "blur.pt")
    with pytest.raises(CheckpointError, match=r"FIR kernel buffer 'convs\.2\.conv\.blur\.kernel'"):
        load_generator(tmp_path / "blur.pt")


def test_discriminator_only_checkpoint_is_reported(tmp_path):
    d_state = {"convs.0.0.weight": torch.zeros(4, 3, 1, 1), "final_linear.0.weight": torch.zeros(1, 4)}
    torch.save({"d": d_state, "d_optim": {"state": {}, "param_groups": []}}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="discriminator"):
        load_generator(tmp_path / "d.pt")
    torch.save(d_state, tmp_path / "d_bare.pt")
    with pytest.raises(CheckpointError, match="discriminator"):
        load_generator(tmp_path / "d_bare.pt")


def test_optimizer_only_checkpoint_is_reported(tmp_path):
    opt = torch.optim.Adam(tiny_generator().parameters())
    torch.save({"g_optim": opt.state_dict(), "d_optim": opt.state_dict()}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="optimizer"):
        load_generator(tmp_path / "opt.pt")
    torch.save(opt.state_dict(), tmp_path / "opt_bare.pt")
    with pytest.raises(CheckpointError, match="optimizer"):
        load_generator(tmp_path / "opt_bare.pt")


def test_non_averaged_generator_is_loaded_with_a_warning(tmp_path):
    g = tiny_generator()
    torch.save({"g": g.state_dict()}, tmp_path / "g_only.pt")
    with pytest.warns(UserWarning, match="non-averaged"):
        loaded, _ = load_generator(tmp_path / "g_only.pt")
    assert torch.equal(render(loaded), render(g))


def test_read_checkpoint_allows_training_args_only(tmp_path):
    torch.save({"args": argparse.Namespace(size=8)}, tmp_path / "a.pt")
    assert read_checkpoint(tmp_path / "a.pt")["args"].size == 8
