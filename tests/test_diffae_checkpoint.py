"""Diff-AE checkpoints: diffae's Lightning files, our own, the registry of released models, and every error path."""

import collections
import hashlib
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from ipl.backends.diffae import ARCHITECTURES, REGISTRY, DiffAECheckpointError, build_autoencoder, load_autoencoder, pretrained, save_autoencoder
from stylegan2.checkpoint import CheckpointError
from stylegan2.pretrained import DownloadError

from test_safe_load import CALLBACK_MODULE, LIGHTNING, RunsCommand, fake_modules

TINY = ARCHITECTURES["tiny"]


def diffae_hyper_parameters(arch=TINY, **overrides):
    """What diffae's ``LitModel`` stores: ``TrainConfig.as_dict_jsonable()`` of an autoencoder template.

    Enum fields (model_name, model_type, train_mode, beatgans_gen_type, ...) are
    absent, as json cannot encode them; ``model_conf`` is the template's earlier
    one (here deliberately stale), which the loader must not use.
    """
    hp = {
        "seed": 0, "train_cond0_prob": 0, "train_pred_xstart_detach": True, "train_interpolate_prob": 0,
        "train_interpolate_img": False, "manipulate_cls": None, "manipulate_shots": None, "manipulate_znormalize": False,
        "manipulate_seed": 0, "accum_batches": 1, "autoenc_mid_attn": True, "batch_size": 64, "batch_size_eval": 64,
        "beatgans_rescale_timesteps": False, "latent_infer_path": None, "latent_znormalize": False,
        "latent_rescale_timesteps": False, "latent_T_eval": 1000, "latent_clip_sample": False,
        "latent_beta_scheduler": "linear", "beta_scheduler": "linear", "data_name": "ffhqlmdb256",
        "data_val_name": "ffhqlmdb256", "diffusion_type": "beatgans", "dropout": arch.dropout, "ema_decay": 0.9999,
        "eval_num_images": 5000, "eval_every_samples": 10_000_000, "eval_ema_every_samples": 10_000_000,
        "fid_use_torch": True, "fp16": True, "grad_clip": 1, "img_size": arch.img_size, "lr": 0.0001, "weight_decay": 0,
        "model_conf": {"image_size": 64, "model_channels": 64, "channel_mult": (1, 2, 4, 8), "attention_resolutions": (16,)},
        "net_attn": arch.net_attn, "net_beatgans_attn_head": arch.net_beatgans_attn_head,
        "net_beatgans_embed_channels": arch.net_beatgans_embed_channels, "net_resblock_updown": True,
        "net_enc_use_time": False, "net_enc_pool": "adaptivenonzero", "net_beatgans_gradient_checkpoint": False,
        "net_beatgans_resnet_two_cond": True, "net_beatgans_resnet_use_zero_module": True,
        "net_beatgans_resnet_cond_channels": None, "net_ch_mult": arch.net_ch_mult, "net_ch": arch.net_ch,
        "net_enc_attn": arch.net_enc_attn, "net_enc_k": None, "net_enc_num_res_blocks": arch.net_enc_num_res_blocks,
        "net_enc_channel_mult": arch.net_enc_channel_mult, "net_enc_grad_checkpoint": False,
        "net_autoenc_stochastic": False, "net_latent_channel_mult": (1, 2, 4), "net_latent_condition_bias": 0,
        "net_latent_dropout": 0, "net_latent_layers": None, "net_latent_num_hid_channels": 1024,
        "net_latent_num_time_layers": 2, "net_latent_skip_layers": None, "net_latent_time_emb_channels": 64,
        "net_latent_use_norm": False, "net_latent_time_last_act": False, "net_num_res_blocks": arch.net_num_res_blocks,
        "net_num_input_res_blocks": None, "net_enc_num_cls": None, "num_workers": 4, "parallel": False, "postfix": "",
        "sample_size": 32, "sample_every_samples": 20_000, "save_every_samples": 100_000, "style_ch": arch.style_ch,
        "T_eval": 20, "T_sampler": "uniform", "T": 1000, "total_samples": 200_000_000, "warmup": 0, "pretrain": None,
        "continue_from": None, "eval_programs": None, "eval_path": None, "base_dir": "checkpoints",
        "use_cache_dataset": False, "data_cache_dir": "/home/user/cache", "work_cache_dir": "/home/user/mycache",
        "name": "tiny_autoenc",
    }
    hp.update(overrides)
    return hp


def lightning_file(path, ema, trained=None, hp=None, *, marker=None, attribute_dict=False, state=None):
    """A file laid out like diffae's ``last.ckpt`` (PyTorch Lightning 1.4)."""
    trained = trained or build_autoencoder("tiny", seed=99)
    hp = diffae_hyper_parameters() if hp is None else hp
    if state is None:
        state = collections.OrderedDict()
        state.update({f"model.{k}": v for k, v in trained.net.state_dict().items()})
        state.update({f"ema_model.{k}": v for k, v in ema.net.state_dict().items()})
        state["x_T"] = torch.randn(4, 3, 32, 32)
    with fake_modules(**{CALLBACK_MODULE: {"ModelCheckpoint": object}, LIGHTNING: {"AttributeDict": dict}}) as mods:
        callback_state = {"best_model_score": None, "best_model_path": "", "dirpath": "checkpoints/tiny_autoenc"}
        if marker is not None:
            callback_state["hook"] = RunsCommand(f"touch {marker}")
        checkpoint = {
            "epoch": 11,
            "global_step": 1234,
            "pytorch-lightning_version": "1.4.5",
            "state_dict": state,
            "callbacks": {mods[CALLBACK_MODULE]["ModelCheckpoint"]: callback_state},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}],
            "lr_schedulers": [],
            "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 17},
            "hparams_name": "kwargs",
            "hyper_parameters": mods[LIGHTNING]["AttributeDict"](hp) if attribute_dict else hp,
        }
        torch.save(checkpoint, path)
    return path


def images(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def outputs(model, x):
    """What every method gives for images x (few steps: only equality matters here)."""
    with torch.no_grad():
        z = model.encode(x)
        x_T = model.encode_stochastic(x, z, 2)
        x_t = model.invert(x, z, 200, 3)
        return dict(z=z, eps=model.eps(x, 250, z), x_T=x_T, image=model.render(x_T, z, 2), x_t=x_t, partial=model.generate(x_t, z, 200, 2))


def assert_same_outputs(a, b):
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_clear(error, *phrases):
    message = str(error.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"
    assert "weights_only=False" not in message


# ----------------------------------------------------------------------------
# diffae's files


@pytest.mark.parametrize("attribute_dict", [False, True])
def test_lightning_checkpoint_gives_the_ema_network_and_runs_nothing(tmp_path, attribute_dict):
    ema, trained = build_autoencoder("tiny", seed=1), build_autoencoder("tiny", seed=2)
    marker = tmp_path / "was_run"
    path = lightning_file(tmp_path / "last.ckpt", ema, trained, diffae_hyper_parameters(T_eval=10), marker=marker, attribute_dict=attribute_dict)

    model = load_autoencoder(path)

    assert not marker.exists() and LIGHTNING not in sys.modules
    assert model.arch == TINY and not model.training  # from the top-level net_* fields, not the stale model_conf
    assert (model.T, model.T_eval, model.rescale_timesteps, model.img_size, model.style_ch) == (1000, 10, False, 32, 32)
    assert model.checkpoint_info["format"] == "lightning" and model.checkpoint_info["name"] == "tiny_autoenc"
    assert model.checkpoint_info["extra"] == {"epoch": 11, "global_step": 1234, "pytorch-lightning_version": "1.4.5"}
    for key, value in ema.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    x = images()
    loaded = outputs(model, x)
    assert_same_outputs(loaded, outputs(ema, x))
    with torch.no_grad():
        assert not torch.equal(loaded["eps"], trained.eps(x, 250, trained.encode(x)))


def test_fields_older_files_lack_take_diffaes_defaults(tmp_path):
    hp = diffae_hyper_parameters()
    for name in ("net_beatgans_resnet_two_cond", "dropout", "net_enc_pool", "T_eval", "beatgans_rescale_timesteps"):
        del hp[name]
    ema = build_autoencoder("tiny", seed=3)
    model = load_autoencoder(lightning_file(tmp_path / "last.ckpt", ema, hp=hp))
    assert model.arch == TINY and model.T_eval == 20 and not model.rescale_timesteps
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ema.parameters()))


def test_latent_dpm_weights_of_latent_checkpoints_are_left_out(tmp_path):
    ema = build_autoencoder("tiny", seed=5)
    state = {f"ema_model.{k}": v for k, v in ema.net.state_dict().items()}
    state["ema_model.latent_net.layers.0.linear.weight"] = torch.randn(8, 32)
    model = load_autoencoder(lightning_file(tmp_path / "last.ckpt", ema, state=state))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ema.parameters()))


# ----------------------------------------------------------------------------
# Our files


def test_save_then_load_gives_identical_outputs_and_a_plain_file(tmp_path):
    model = build_autoencoder({**TINY.as_dict(), "T_eval": 10}, seed=6)
    path = save_autoencoder(tmp_path / "sub" / "diffae.pt", model, step=7, config={"lr": 1e-5})
    assert sorted(p.name for p in path.parent.iterdir()) == ["diffae.pt"]  # written atomically

    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == ["config", "format", "hyper_parameters", "state_dict", "step"] and raw["format"] == 1
    assert all(k.startswith("ema_model.") for k in raw["state_dict"])
    assert raw["hyper_parameters"]["net_ch_mult"] == [1, 1] and raw["hyper_parameters"]["T_eval"] == 10

    loaded = load_autoencoder(path)
    assert loaded.arch == model.arch and loaded.T_eval == 10
    assert loaded.checkpoint_info["format"] == 1 and loaded.checkpoint_info["extra"] == {"step": 7, "config": {"lr": 1e-5}}
    x = images(seed=1)
    assert_same_outputs(outputs(loaded, x), outputs(model, x))
    for p in loaded.parameters():  # the model owns its weights (no view of a file mapping)
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()

    with pytest.raises(TypeError, match="not plain data"):
        save_autoencoder(tmp_path / "bad.pt", model, config=object())
    with pytest.raises(ValueError, match="reserved"):
        save_autoencoder(tmp_path / "bad.pt", model, state_dict={})


def test_build_autoencoder_depends_on_its_seed_only():
    state = torch.get_rng_state()
    a, b, c = build_autoencoder("tiny", seed=0), build_autoencoder("tiny", seed=0), build_autoencoder("tiny", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert not a.training
    with torch.device("meta"):
        assert build_autoencoder("ffhq256_autoenc", device="meta").arch == ARCHITECTURES["ffhq256"]


# ----------------------------------------------------------------------------
# Errors


def _file(tmp_path, obj, name="last.ckpt"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def _ema_state(seed=0):
    return {f"ema_model.{k}": v for k, v in build_autoencoder("tiny", seed=seed).net.state_dict().items()}


BROKEN = {
    "not_diffae": (lambda tmp: _file(tmp, {"g_ema": {"w": torch.ones(1)}, "latent_avg": torch.zeros(4)}), ["not a Diff-AE checkpoint", "g_ema"]),
    "no_ema": (
        lambda tmp: _file(tmp, {"state_dict": {k.replace("ema_model.", "model."): v for k, v in _ema_state().items()}, "hyper_parameters": diffae_hyper_parameters()}),
        ["no EMA weights", "ema_model"],
    ),
    "ddim": (
        lambda tmp: _file(tmp, {"state_dict": {k: v for k, v in _ema_state().items() if ".encoder." not in k}, "hyper_parameters": diffae_hyper_parameters()}),
        ["DDIM", "autoencoding only"],
    ),
    "shapes": (
        lambda tmp: _file(tmp, {"state_dict": _ema_state(), "hyper_parameters": diffae_hyper_parameters(net_ch=32)}),
        ["do not fit", "net_ch=32", "'time_embed.time_embed.0.weight' is (32, 32) in the network, (32, 16) in the file"],
    ),
    "missing_field": (
        lambda tmp: _file(tmp, {"state_dict": _ema_state(), "hyper_parameters": {k: v for k, v in diffae_hyper_parameters().items() if k != "net_ch"}}),
        ["no 'net_ch'"],
    ),
    "wrong_type": (
        lambda tmp: _file(tmp, {"state_dict": _ema_state(), "hyper_parameters": diffae_hyper_parameters(net_ch_mult="1,1")}),
        ["net_ch_mult", "'1,1'", "a list of integers"],
    ),
    "schedule": (
        lambda tmp: _file(tmp, {"state_dict": _ema_state(), "hyper_parameters": diffae_hyper_parameters(beta_scheduler="cosine")}),
        ["beta_scheduler", "'linear'"],
    ),
    "no_hparams": (lambda tmp: _file(tmp, {"state_dict": _ema_state()}), ["no 'hyper_parameters'"]),
    "newer": (
        lambda tmp: _file(tmp, {"format": 2, "state_dict": _ema_state(), "hyper_parameters": diffae_hyper_parameters()}),
        ["format 2", "update the code"],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_files_that_are_not_usable_diffae_checkpoints_are_clear_errors(tmp_path, case):
    make, phrases = BROKEN[case]
    path = make(tmp_path)
    with pytest.raises(DiffAECheckpointError) as error:
        load_autoencoder(path)
    assert_clear(error, str(path), *phrases)


def test_damaged_legacy_and_missing_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(tmp_path / "pretrained"))
    good = lightning_file(tmp_path / "good.ckpt", build_autoencoder("tiny", seed=1))
    data = good.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DiffAECheckpointError) as error:
        load_autoencoder(tmp_path / "cut.ckpt")
    assert_clear(error, "cut.ckpt", "truncated", "released 'last.ckpt'")

    with fake_modules(**{LIGHTNING: {"AttributeDict": dict}}) as mods:
        hp = mods[LIGHTNING]["AttributeDict"](diffae_hyper_parameters())
        torch.save({"state_dict": _ema_state(), "hyper_parameters": hp}, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(DiffAECheckpointError) as error:
        load_autoencoder(tmp_path / "old.ckpt")
    assert_clear(error, "old.ckpt", "legacy")

    with pytest.raises(DiffAECheckpointError) as error:
        load_autoencoder(tmp_path / "nowhere.ckpt")
    assert_clear(error, "not found", "nowhere.ckpt", "neither a file nor a released checkpoint name", "ffhq256_autoenc")

    with pytest.raises(DiffAECheckpointError) as error:
        load_autoencoder(tmp_path / "checkpoints" / "ffhq256_autoenc" / "last.ckpt")  # diffae's own layout
    assert_clear(error, "not found", REGISTRY["ffhq256_autoenc"].page)

    with pytest.raises(CheckpointError) as error:
        load_autoencoder("ffhq256_autoenc")
    dest = tmp_path / "pretrained" / "diffae" / "ffhq256_autoenc" / "last.ckpt"
    assert_clear(error, "not installed", REGISTRY["ffhq256_autoenc"].page, str(dest), "gdown", "IPL_DIFFAE_URL")


# ----------------------------------------------------------------------------
# The registry and fetching

README_FOLDERS = {  # diffae README, "Checkpoints", "DiffAE (autoencoding only)"
    "ffhq256_autoenc": "1-5zfxT6Gl-GjxM7z9ZO2AHlB70tfmF6V",
    "ffhq128_autoenc_72M": "10bmB6WhLkgxybkhso5g3JmIFPAnmZMQO",
    "ffhq128_autoenc_130M": "10UNtFNfxbHBPkoIh003JkSPto5s-VbeN",
    "bedroom128_autoenc": "12EdjbIKnvP5RngKsR0UU-4kgpPAaYtlp",
    "horse128_autoenc": "12EtTRXzQc5uPHscpjIcci-Rg-OGa_N30",
}


def test_registry_lists_diffaes_released_autoencoders():
    assert sorted(REGISTRY) == sorted(README_FOLDERS)
    for name, model in REGISTRY.items():
        assert model.page == f"https://drive.google.com/drive/folders/{README_FOLDERS[name]}"
        assert ARCHITECTURES[model.architecture].img_size == model.resolution
        assert str(model.resolution) in name
    assert REGISTRY["ffhq256_autoenc"].resolution == 256 and REGISTRY["horse128_autoenc"].resolution == 128


@pytest.fixture
def pretrained_root(tmp_path, monkeypatch):
    root = tmp_path / "pretrained"
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(root))
    monkeypatch.delenv("IPL_DIFFAE_URL", raising=False)
    monkeypatch.setattr(pretrained, "_verified", {})
    return root


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_an_installed_file_is_found_by_name_and_its_hash_recorded_then_checked(pretrained_root, tmp_path, capsys):
    dest = pretrained_root / "diffae" / "ffhq256_autoenc" / "last.ckpt"
    assert pretrained.checkpoint_file("ffhq256_autoenc") == dest
    assert pretrained.checkpoint_file("ffhq256_autoenc", root=tmp_path / "other") == tmp_path / "other" / "diffae" / "ffhq256_autoenc" / "last.ckpt"
    dest.parent.mkdir(parents=True)
    ema = build_autoencoder("tiny", seed=8)
    lightning_file(dest, ema)

    model = load_autoencoder("ffhq256_autoenc")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ema.parameters()))
    sidecar = dest.with_name("last.ckpt.sha256")
    assert sidecar.read_text().split()[0] == _sha256(dest)
    assert "recorded" in capsys.readouterr().err

    lightning_file(dest, build_autoencoder("tiny", seed=9))  # replaced by another file
    with pytest.raises(DownloadError) as error:
        load_autoencoder("ffhq256_autoenc")
    assert_clear(error, "does not match", "delete", str(dest))


def test_without_gdown_or_a_mirror_the_error_says_how_to_download_by_hand(pretrained_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown fails
    with pytest.raises(DownloadError) as error:
        load_autoencoder("bedroom128_autoenc", download=True)
    dest = pretrained_root / "diffae" / "bedroom128_autoenc" / "last.ckpt"
    assert_clear(error, "gdown is not installed", REGISTRY["bedroom128_autoenc"].page, str(dest), "pip install gdown")
    assert not dest.exists()


def test_a_mirror_download_is_installed_and_its_hash_recorded(pretrained_root, tmp_path):
    served = tmp_path / "mirror" / "horse128_autoenc" / "last.ckpt"
    served.parent.mkdir(parents=True)
    ema = build_autoencoder("tiny", seed=10)
    lightning_file(served, ema)
    path = pretrained.fetch("horse128_autoenc", base_url=(tmp_path / "mirror").as_uri(), progress=False)
    assert path.read_bytes() == served.read_bytes()
    assert path.with_name("last.ckpt.sha256").read_text().split()[0] == _sha256(served)
    model = load_autoencoder("horse128_autoenc")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ema.parameters()))


def fake_gdown(source, *, listing=True, fail=None):
    """A stand-in for the gdown package that serves ``source`` as the folder's last.ckpt."""
    module = types.ModuleType("gdown")
    module.calls = []

    def download_folder(url=None, output=None, quiet=False, use_cookies=True, skip_download=None, **kwargs):
        module.calls.append(("download_folder", url, skip_download))
        if skip_download is not None and not listing:
            raise TypeError("download_folder() got an unexpected keyword argument 'skip_download'")
        if skip_download:
            return [
                types.SimpleNamespace(id="id-latent", path="ffhq128_autoenc_72M/latent.ckpt", local_path=None),
                types.SimpleNamespace(id="id-last", path="ffhq128_autoenc_72M/last.ckpt", local_path=None),
            ]
        folder = Path(output) / "ffhq128_autoenc_72M"
        folder.mkdir(parents=True)
        shutil.copy(source, folder / "last.ckpt")
        (folder / "latent.ckpt").write_bytes(b"z_sem of the training set")
        return [str(folder / "last.ckpt"), str(folder / "latent.ckpt")]

    def download(url=None, output=None, quiet=False, id=None, resume=False, **kwargs):
        module.calls.append(("download", id, resume))
        if fail:
            Path(output).write_bytes(b"partial")
            raise fail
        shutil.copy(source, output)
        return output

    module.download_folder, module.download = download_folder, download
    return module


@pytest.mark.parametrize("listing", [True, False])
def test_gdown_fetches_last_ckpt_from_the_drive_folder(pretrained_root, tmp_path, monkeypatch, listing):
    source = lightning_file(tmp_path / "served.ckpt", build_autoencoder("tiny", seed=11))
    gdown = fake_gdown(source, listing=listing)
    monkeypatch.setitem(sys.modules, "gdown", gdown)

    path = pretrained.fetch("ffhq128_autoenc_72M", progress=False)

    page = REGISTRY["ffhq128_autoenc_72M"].page
    assert path == pretrained_root / "diffae" / "ffhq128_autoenc_72M" / "last.ckpt"
    assert path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    if listing:
        assert gdown.calls == [("download_folder", page, True), ("download", "id-last", True)]
    else:
        assert gdown.calls[-1] == ("download_folder", page, None)
    load_autoencoder("ffhq128_autoenc_72M")


def test_a_failing_gdown_download_is_a_clear_error_and_installs_nothing(pretrained_root, tmp_path, monkeypatch):
    source = lightning_file(tmp_path / "served.ckpt", build_autoencoder("tiny", seed=12))
    monkeypatch.setitem(sys.modules, "gdown", fake_gdown(source, fail=ConnectionError("quota exceeded\nmore lines")))
    with pytest.raises(DownloadError) as error:
        load_autoencoder("ffhq128_autoenc_72M", download=True)
    dest = pretrained_root / "diffae" / "ffhq128_autoenc_72M" / "last.ckpt"
    assert_clear(error, "gdown failed", "quota exceeded", "kept in", str(dest))
    assert not dest.exists() and dest.with_name("last.ckpt.part").exists()
