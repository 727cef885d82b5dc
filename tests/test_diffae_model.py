"""The Diff-AE network: diffae's state-dict layout, the blocks' arithmetic, and the tiny test architecture."""

import math
import time

import pytest
import torch
from torch.nn import functional as F

from ipl.backends.diffae import ARCHITECTURES, Architecture, build_autoencoder
from ipl.backends.diffae.model import AttentionBlock, AutoencoderUNet, ResBlock, timestep_embedding


# ----------------------------------------------------------------------------
# diffae's construction rules, written out independently of the library:
# guided diffusion's UNet with one global stack of skip widths (equivalent to
# diffae's per-level stacks when every level has as many blocks down as up
# minus one), BeatGANs residual blocks with a time and a z_sem condition, and
# the encoder's unconditioned blocks (norm, SiLU, conv and the skip only).


def _norm(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def _conv(p, cin, cout, k):
    return {f"{p}.weight": (cout, cin, k, k), f"{p}.bias": (cout,)}


def _conv1d(p, cin, cout):
    return {f"{p}.weight": (cout, cin, 1), f"{p}.bias": (cout,)}


def _linear(p, cin, cout):
    return {f"{p}.weight": (cout, cin), f"{p}.bias": (cout,)}


def _res(p, cin, cout, emb=None, style=None):
    keys = {**_norm(f"{p}.in_layers.0", cin), **_conv(f"{p}.in_layers.2", cin, cout, 3)}
    if emb is not None:
        keys.update(_linear(f"{p}.emb_layers.1", emb, 2 * cout))
        keys.update(_linear(f"{p}.cond_emb_layers.1", style, cout))
        keys.update(_norm(f"{p}.out_layers.0", cout))
        keys.update(_conv(f"{p}.out_layers.3", cout, cout, 3))
    if cin != cout:
        keys.update(_conv(f"{p}.skip_connection", cin, cout, 1))
    return keys


def _attn(p, c):
    return {**_norm(f"{p}.norm", c), **_conv1d(f"{p}.qkv", c, 3 * c), **_conv1d(f"{p}.proj_out", c, c)}


def expected_manifest(img, ch, mult, enc_mult, attn, enc_attn, n_res, n_enc_res, emb, style):
    keys = {**_linear("time_embed.time_embed.0", ch, emb), **_linear("time_embed.time_embed.2", emb, emb)}

    # UNet, down
    k, c, res, stack = 0, ch * mult[0], img, []
    keys.update(_conv("input_blocks.0.0", 3, c, 3))
    stack.append(c)
    for level, m in enumerate(mult):
        for _ in range(n_res):
            k += 1
            keys.update(_res(f"input_blocks.{k}.0", c, ch * m, emb, style))
            c = ch * m
            if res in attn:
                keys.update(_attn(f"input_blocks.{k}.1", c))
            stack.append(c)
        if level < len(mult) - 1:
            k += 1
            keys.update(_res(f"input_blocks.{k}.0", c, c, emb, style))
            stack.append(c)
            res //= 2
    keys.update(_res("middle_block.0", c, c, emb, style))
    keys.update(_attn("middle_block.1", c))
    keys.update(_res("middle_block.2", c, c, emb, style))

    # UNet, up
    k = -1
    for level in reversed(range(len(mult))):
        for i in range(n_res + 1):
            k += 1
            out = ch * mult[level]
            keys.update(_res(f"output_blocks.{k}.0", c + stack.pop(), out, emb, style))
            c, j = out, 1
            if res in attn:
                keys.update(_attn(f"output_blocks.{k}.1", c))
                j = 2
            if level > 0 and i == n_res:
                keys.update(_res(f"output_blocks.{k}.{j}", c, c, emb, style))
                res *= 2
    assert not stack and res == img
    keys.update(_norm("out.0", c))
    keys.update(_conv("out.2", ch * mult[0], 3, 3))

    # semantic encoder
    k, c, res = 0, ch * enc_mult[0], img
    keys.update(_conv("encoder.input_blocks.0.0", 3, c, 3))
    for level, m in enumerate(enc_mult):
        for _ in range(n_enc_res):
            k += 1
            keys.update(_res(f"encoder.input_blocks.{k}.0", c, ch * m))
            c = ch * m
            if res in enc_attn:
                keys.update(_attn(f"encoder.input_blocks.{k}.1", c))
        if level < len(enc_mult) - 1:
            k += 1
            keys.update(_res(f"encoder.input_blocks.{k}.0", c, c))
            res //= 2
    keys.update(_res("encoder.middle_block.0", c, c))
    keys.update(_attn("encoder.middle_block.1", c))
    keys.update(_res("encoder.middle_block.2", c, c))
    keys.update(_norm("encoder.out.0", c))
    keys.update(_conv("encoder.out.3", c, style, 1))
    return keys


# diffae templates.py: ffhq256_autoenc and ffhq128_autoenc_base
FFHQ256 = dict(img=256, ch=128, mult=(1, 1, 2, 2, 4, 4), enc_mult=(1, 1, 2, 2, 4, 4, 4), attn=(16,), enc_attn=(16,))
FFHQ128 = dict(img=128, ch=128, mult=(1, 1, 2, 3, 4), enc_mult=(1, 1, 2, 3, 4, 4), attn=(16,), enc_attn=(16,))
COMMON = dict(n_res=2, n_enc_res=2, emb=512, style=512)


def manifest_of(arch_name):
    with torch.device("meta"):  # shapes without allocating 168M parameters
        net = AutoencoderUNet(ARCHITECTURES[arch_name])
    return net, {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    "arch_name, rules, n_params",
    [("ffhq256", {**FFHQ256, **COMMON}, 168_492_291), ("ffhq128", {**FFHQ128, **COMMON}, 128_545_155)],
)
def test_released_architectures_have_diffaes_keys_and_shapes(arch_name, rules, n_params):
    net, manifest = manifest_of(arch_name)
    expected = expected_manifest(**rules)
    assert sorted(set(manifest) ^ set(expected)) == []
    assert {k: s for k, s in manifest.items() if expected[k] != s} == {}
    assert sum(math.prod(s) for s in expected.values()) == n_params  # the rules' count...
    assert sum(p.numel() for p in net.parameters()) == n_params  # ...is the network's
    assert not list(net.buffers())  # everything in the checkpoint is a parameter


def test_the_released_checkpoints_share_ffhq128s_network():
    for name in ("bedroom128", "horse128"):
        assert ARCHITECTURES[name] == ARCHITECTURES["ffhq128"]
    arch = ARCHITECTURES["ffhq256"]
    assert (arch.dropout, arch.net_beatgans_embed_channels, arch.style_ch, arch.net_beatgans_attn_head) == (0.1, 512, 512, 1)
    assert arch.net_beatgans_resnet_two_cond and arch.net_resblock_updown and arch.net_enc_pool == "adaptivenonzero"


def test_tiny_follows_the_same_rules_and_uses_every_block_type():
    net, manifest = manifest_of("tiny")
    rules = dict(img=32, ch=16, mult=(1, 1), enc_mult=(1, 2, 2), attn=(16,), enc_attn=(8,), n_res=1, n_enc_res=1, emb=32, style=32)
    assert manifest == expected_manifest(**rules)
    n = sum(p.numel() for p in net.parameters())
    assert 50_000 < n < 500_000

    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    encoder_blocks = [m for m in net.encoder.modules() if isinstance(m, ResBlock)]
    assert any(b.updown and not b.use_condition for b in encoder_blocks)  # resampling in the encoder
    assert any(b.updown and b.use_condition and b.h_upd.__class__.__name__ == "Upsample" for b in blocks)
    assert any(b.updown and b.use_condition and b.h_upd.__class__.__name__ == "Downsample" for b in blocks)
    assert any(b.has_lateral for b in blocks)
    assert any(isinstance(b.skip_connection, torch.nn.Conv2d) for b in blocks if b.use_condition)
    assert any(isinstance(b.skip_connection, torch.nn.Conv2d) for b in encoder_blocks)
    attention = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    assert len([m for m in net.encoder.modules() if isinstance(m, AttentionBlock)]) >= 2  # at 8 px and in the middle
    assert len(attention) > 2 and all(m.num_heads == 2 for m in attention)


def test_tiny_forward_takes_well_under_a_tenth_of_a_second():
    model = build_autoencoder("tiny", seed=0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    t = torch.tensor([500])
    timings = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: stable on a shared machine, where OpenMP threads contend
    try:
        with torch.no_grad():
            for _ in range(5):
                start = time.perf_counter()
                model.eps(x, t, model.encode(x))
                timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert min(timings) < 0.05


# ----------------------------------------------------------------------------
# The blocks' arithmetic, written out from diffae's description


def random_params(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def test_conditioned_resblock_scales_and_shifts_by_time_then_scales_by_zsem():
    block = random_params(ResBlock(32, 24, 0.0, out_channels=64, cond_emb_channels=16)).eval()
    x, emb, z = torch.randn(2, 32, 8, 8), torch.randn(2, 24), torch.randn(2, 16)

    n1, c1 = block.in_layers[0], block.in_layers[2]
    n2, c2 = block.out_layers[0], block.out_layers[3]
    h = F.conv2d(F.silu(F.group_norm(x, 32, n1.weight, n1.bias)), c1.weight, c1.bias, padding=1)
    time = F.linear(F.silu(emb), block.emb_layers[1].weight, block.emb_layers[1].bias)
    scale, shift = time[:, :64, None, None], time[:, 64:, None, None]
    style = F.linear(F.silu(z), block.cond_emb_layers[1].weight, block.cond_emb_layers[1].bias)[:, :, None, None]
    h = F.group_norm(h, 32, n2.weight, n2.bias) * (1 + scale) + shift
    h = F.conv2d(F.silu(h * (1 + style)), c2.weight, c2.bias, padding=1)
    skip = F.conv2d(x, block.skip_connection.weight, block.skip_connection.bias)

    torch.testing.assert_close(block(x, emb=emb, cond=z), skip + h, rtol=1e-5, atol=1e-5)


def test_resampling_resblocks_resample_both_branches_before_the_first_conv():
    up = random_params(ResBlock(32, 8, 0.0, up=True, cond_emb_channels=8)).eval()
    down = random_params(ResBlock(32, None, 0.0, use_condition=False, down=True))
    x = torch.randn(1, 32, 8, 8)
    n1, c1 = down.in_layers[0], down.in_layers[2]
    expected = F.avg_pool2d(x, 2) + F.conv2d(F.avg_pool2d(F.silu(F.group_norm(x, 32, n1.weight, n1.bias)), 2), c1.weight, c1.bias, padding=1)
    torch.testing.assert_close(down(x), expected, rtol=1e-5, atol=1e-5)
    assert up(x, emb=torch.randn(1, 8), cond=torch.randn(1, 8)).shape == (1, 32, 16, 16)


def test_attention_is_multihead_softmax_attention_with_a_residual():
    block = random_params(AttentionBlock(32, num_heads=2))
    x = torch.randn(2, 32, 4, 4)
    flat = x.reshape(2, 32, 16)
    qkv = F.conv1d(F.group_norm(flat, 32, block.norm.weight, block.norm.bias), block.qkv.weight, block.qkv.bias)
    heads = []
    for head in range(2):  # legacy layout: [q, k, v] of head 0, then of head 1
        q, k, v = qkv[:, head * 48 : (head + 1) * 48].split(16, dim=1)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(16), dim=-1)  # (B, T, T)
        heads.append((weights @ v.transpose(1, 2)).transpose(1, 2))
    out = F.conv1d(torch.cat(heads, dim=1), block.proj_out.weight, block.proj_out.bias)
    torch.testing.assert_close(block(x), (flat + out).reshape(2, 32, 4, 4), rtol=1e-5, atol=1e-5)


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    t = torch.tensor([0, 1, 37, 999])
    emb = timestep_embedding(t, 6)
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(3)])
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected)
    assert timestep_embedding(t, 7).shape == (4, 7) and torch.all(timestep_embedding(t, 7)[:, -1] == 0)


def test_noise_prediction_depends_on_the_image_time_and_code_and_codes_are_per_image():
    model = build_autoencoder("tiny", seed=3)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (3, model.style_ch)
        torch.testing.assert_close(model.encode(x[1:2]), z[1:2], rtol=1e-5, atol=1e-6)  # no batch coupling
        base = model.eps(x, 100, z)
        assert base.shape == x.shape
        assert not torch.allclose(model.eps(x, 101, z), base)
        assert not torch.allclose(model.eps(x, 100, z.flip(0)), base)
        torch.testing.assert_close(model.eps(x, torch.tensor([100, 100, 100]), z), base)


def test_architectures_diffae_cannot_build_are_refused():
    tiny = ARCHITECTURES["tiny"].as_dict()
    with pytest.raises(ValueError, match="two_cond"):
        Architecture(**{**tiny, "net_beatgans_resnet_two_cond": False})
    with pytest.raises(ValueError, match="adaptivenonzero"):
        Architecture(**{**tiny, "net_enc_pool": "depthconv"})
    with pytest.raises(ValueError, match="style_ch=48"):
        Architecture(**{**tiny, "style_ch": 48})
    with pytest.raises(ValueError, match="cannot be halved"):
        Architecture(**{**tiny, "img_size": 34})
    with pytest.raises(ValueError, match="unknown Diff-AE architecture"):
        build_autoencoder("ffhq512")
    assert Architecture(**tiny) == ARCHITECTURES["tiny"]  # lists from plain data become tuples again
