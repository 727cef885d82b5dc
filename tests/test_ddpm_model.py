"""The DDPM backend's network: DiffusionCLIP's raw layout converted to UNet2DModel, DDIM walks, loading."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ipl.backends.ddpm import DDPMCheckpointError, build_ddpm, load_ddpm, save_ddpm
from ipl.backends.ddpm import pretrained as P

# A small network in the layout of DiffusionCLIP's models/ddpm/diffusion.py DDPM.
CH, CH_MULT, N_RES, SIZE, ATTN = 32, (1, 2), 1, 16, (8,)


def raw_ddpm_state(seed=0, ch=CH, ch_mult=CH_MULT, n_res=N_RES, size=SIZE, attn=ATTN):
    """Random tensors under DiffusionCLIP's DDPM names and shapes (its __init__, walked by hand)."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, cin, cout, k):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) / math.sqrt(cin * k * k)
        state[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)

    def linear(name, cin, cout):
        state[f"{name}.weight"] = torch.randn(cout, cin, generator=g) / math.sqrt(cin)
        state[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)

    def norm(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        linear(f"{name}.temb_proj", 4 * ch, cout)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attention(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    linear("temb.dense.0", ch, 4 * ch)
    linear("temb.dense.1", 4 * ch, 4 * ch)
    conv("conv_in", 3, ch, 3)
    res, c = size, ch
    for level, m in enumerate(ch_mult):
        for i in range(n_res):
            resnet(f"down.{level}.block.{i}", c, ch * m)
            c = ch * m
            if res in attn:
                attention(f"down.{level}.attn.{i}", c)
        if level != len(ch_mult) - 1:
            conv(f"down.{level}.downsample.conv", c, c, 3)
            res //= 2
    resnet("mid.block_1", c, c)
    attention("mid.attn_1", c)
    resnet("mid.block_2", c, c)
    for level in reversed(range(len(ch_mult))):
        out, skip = ch * ch_mult[level], ch * ch_mult[level]
        for i in range(n_res + 1):
            if i == n_res:
                skip = ch * ((1,) + ch_mult)[level]  # in_ch_mult
            resnet(f"up.{level}.block.{i}", c + skip, out)
            c = out
            if res in attn:
                attention(f"up.{level}.attn.{i}", c)
        if level != 0:
            conv(f"up.{level}.upsample.conv", c, c, 3)
            res *= 2
    norm("norm_out", c)
    conv("conv_out", c, 3, 3)
    return state


def naive_ddpm_forward(s, x, t, ch=CH, ch_mult=CH_MULT, n_res=N_RES):
    """Ho et al.'s forward written out from the raw tensors (no diffusers, no ipl code)."""

    def gn(h, name):
        return F.group_norm(h, 32, s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-6)

    def conv(h, name, stride=1, padding=1):
        return F.conv2d(h, s[f"{name}.weight"], s[f"{name}.bias"], stride=stride, padding=padding)

    def swish(h):
        return h * torch.sigmoid(h)

    def resnet(h, name):
        y = conv(swish(gn(h, f"{name}.norm1")), f"{name}.conv1")
        y = y + F.linear(swish(temb), s[f"{name}.temb_proj.weight"], s[f"{name}.temb_proj.bias"])[:, :, None, None]
        y = conv(swish(gn(y, f"{name}.norm2")), f"{name}.conv2")
        if f"{name}.nin_shortcut.weight" in s:
            h = conv(h, f"{name}.nin_shortcut", padding=0)
        return h + y

    def attention(h, name):
        b, c, hh, ww = h.shape
        n = gn(h, f"{name}.norm")
        q, k, v = (conv(n, f"{name}.{p}", padding=0).reshape(b, c, hh * ww) for p in "qkv")
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=2)
        y = torch.einsum("bcj,bij->bci", v, w).reshape(b, c, hh, ww)
        return h + conv(y, f"{name}.proj_out", padding=0)

    half = ch // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))
    emb = t.float()[:, None] * freqs[None]
    temb = torch.cat([emb.sin(), emb.cos()], dim=1)
    temb = F.linear(temb, s["temb.dense.0.weight"], s["temb.dense.0.bias"])
    temb = F.linear(swish(temb), s["temb.dense.1.weight"], s["temb.dense.1.bias"])

    hs = [conv(x, "conv_in")]
    for level in range(len(ch_mult)):
        for i in range(n_res):
            h = resnet(hs[-1], f"down.{level}.block.{i}")
            if f"down.{level}.attn.{i}.q.weight" in s:
                h = attention(h, f"down.{level}.attn.{i}")
            hs.append(h)
        if level != len(ch_mult) - 1:
            hs.append(conv(F.pad(hs[-1], (0, 1, 0, 1)), f"down.{level}.downsample.conv", stride=2, padding=0))
    h = resnet(hs[-1], "mid.block_1")
    h = attention(h, "mid.attn_1")
    h = resnet(h, "mid.block_2")
    for level in reversed(range(len(ch_mult))):
        for i in range(n_res + 1):
            h = resnet(torch.cat([h, hs.pop()], dim=1), f"up.{level}.block.{i}")
            if f"up.{level}.attn.{i}.q.weight" in s:
                h = attention(h, f"up.{level}.attn.{i}")
        if level != 0:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"up.{level}.upsample.conv")
    return conv(swish(gn(h, "norm_out")), "conv_out")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    state = raw_ddpm_state()
    path = tmp_path_factory.mktemp("raw") / "celeba_hq.ckpt"
    torch.save(state, path)
    return state, path


def test_a_raw_diffusionclip_checkpoint_converts_to_a_unet2dmodel_with_the_same_outputs(raw, tmp_path):
    state, path = raw
    model = load_ddpm(path, img_size=SIZE)
    # The architecture read from the shapes alone.
    config = model.unet_config
    assert config["block_out_channels"] == [CH * m for m in CH_MULT] and config["layers_per_block"] == N_RES
    assert config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"] and config["up_block_types"] == ["AttnUpBlock2D", "UpBlock2D"]
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 537])
    with torch.no_grad():
        expected = naive_ddpm_forward(state, x, t)
        torch.testing.assert_close(model.eps(x, t), expected, rtol=1e-4, atol=1e-5)
    # DiffusionCLIP's own fine-tuned files come from DataParallel: "module." prefixes.
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "finetuned.pth")
    with torch.no_grad():
        torch.testing.assert_close(load_ddpm(tmp_path / "finetuned.pth", img_size=SIZE).eps(x, t), expected, rtol=1e-4, atol=1e-5)


def naive_denoising_step(x, t, t_next, eps, alphas_cumprod):
    """DiffusionCLIP's DDIM step (eta 0), alpha-bar of "-1" = 1, x0 unclamped."""
    a = alphas_cumprod[t]
    a_next = alphas_cumprod[t_next] if t_next >= 0 else 1.0
    x0 = (x - eps * math.sqrt(1 - a)) / math.sqrt(a)
    return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps


def test_invert_and_generate_are_diffusionclips_loops_over_its_denoising_step():
    model = build_ddpm("tiny", seed=0)
    betas = np.linspace(1e-4, 0.02, 1000)
    ac = np.cumprod(1 - betas)
    assert np.allclose(model.alphas_cumprod, ac, rtol=0, atol=1e-15)
    t_0, n = 300, 5
    seq = [int(s) for s in np.linspace(0, 1, n) * t_0]
    seq_next = [-1] + seq[:-1]
    x0 = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        x, visited = x0, []
        for i, j in zip(seq_next[1:], seq[1:]):  # inversion: x0 is the state at t = 0
            x = naive_denoising_step(x, i, j, model.eps(x, i), ac)
            visited.append(i)
        assert visited == [0, 75, 150, 225]
        torch.testing.assert_close(model.invert(x0, t_0, n), x, rtol=0, atol=1e-5)
        x_t0 = x
        for i, j in zip(reversed(seq), reversed(seq_next)):  # generation: the last step goes to -1
            x = naive_denoising_step(x, i, j, model.eps(x, i), ac)
        torch.testing.assert_close(model.generate(x_t0, t_0, n), x, rtol=0, atol=1e-5)


def test_our_file_and_a_diffusers_folder_load_the_same_network(tmp_path):
    model = build_ddpm("tiny", seed=3)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.eps(x, 99)
        save_ddpm(tmp_path / "ddpm.pt", model, step=4)
        assert torch.load(tmp_path / "ddpm.pt", weights_only=True)["step"] == 4  # plain data
        torch.testing.assert_close(load_ddpm(tmp_path / "ddpm.pt").eps(x, 99), expected, rtol=0, atol=0)
        model.net.save_pretrained(tmp_path / "folder")
        torch.testing.assert_close(load_ddpm(tmp_path / "folder").eps(x, 99), expected, rtol=0, atol=0)


def test_a_hub_id_is_found_in_the_pretrained_folder_or_named_in_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = build_ddpm("tiny", seed=4)
    model.net.save_pretrained(tmp_path / "ddpm" / "google" / "ddpm-celebahq-256")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_ddpm("google/ddpm-celebahq-256").eps(x, 5), model.eps(x, 5), rtol=0, atol=0)
    with pytest.raises(DDPMCheckpointError) as e:
        load_ddpm("google/ddpm-church-256")  # not installed, not cached: no network is tried
    message = str(e.value)
    assert "google/ddpm-church-256" in message and str(tmp_path / "ddpm" / "google" / "ddpm-church-256") in message
    assert "\n" not in message


def test_registry_names_say_where_the_dead_links_mirrors_are(tmp_path):
    with pytest.raises(DDPMCheckpointError) as e:
        load_ddpm("celeba_hq", pretrained_dir=tmp_path)
    message = str(e.value)
    assert str(tmp_path / "ddpm" / "celeba_hq.ckpt") in message
    assert "huggingface.co/gwang-kim/DiffusionCLIP-CelebA_HQ" in message and "403" in message
    assert all(m.source.startswith(P.DEAD_BUCKET) and m.mirrors for m in P.REGISTRY.values())
    assert set(P.REGISTRY) == {"celeba_hq", "bedroom", "church_outdoor"}


def test_foreign_files_are_refused_with_what_they_are(tmp_path):
    torch.save({"g_ema": {"w": torch.zeros(1)}}, tmp_path / "gen.pt")
    with pytest.raises(DDPMCheckpointError, match="not a DDPM checkpoint"):
        load_ddpm(tmp_path / "gen.pt")
    torch.save({"conv_in.weight": torch.zeros(32, 3, 3, 3), "down.0.block.0.conv1.weight": torch.zeros(32, 32, 3, 3), "down.0.extra.weight": torch.zeros(1)}, tmp_path / "odd.ckpt")
    with pytest.raises(DDPMCheckpointError, match="'down.0.extra.weight' is not part of Ho et al.'s UNet"):
        load_ddpm(tmp_path / "odd.ckpt")
    with pytest.raises(DDPMCheckpointError, match="DDPM checkpoint not found"):
        load_ddpm(tmp_path / "nowhere.ckpt")
