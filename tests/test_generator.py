"""StyleGAN2 generator: the reference port's state_dict layout, its golden
outputs on every exact computation path, the reference forward contract, and
agreement (values and gradients) between the alternative formulations."""

import itertools
import json
import math

import pytest
import torch

import stylegan2.model
from stylegan2.model import (
    CONV_IMPLS,
    EPILOGUES,
    RESAMPLE_IMPLS,
    Blur,
    Generator,
    ModulatedConv2d,
    Upsample,
    fir_filter,
    per_sample_block,
    resolve_conv_impl,
)
from stylegan2.ops import upfirdn2d

from helpers import golden_fill

from stylegan2.golden import GOLDEN_ATOL, GOLDEN_CALLS, GOLDEN_LATENTS, GOLDEN_RTOL, golden_generator

MANIFESTS = ["generator_keys_1024_cm2.json", "generator_keys_512_cm2.json", "generator_keys_256_cm2.json", "generator_keys_256_cm1.json"]
# Every distinct computation; "auto" only resolves to one of the two
# formulations, so it is checked with the default resample and epilogue.
PATHS = list(itertools.product(("grouped", "shared"), RESAMPLE_IMPLS, EPILOGUES)) + [("auto", "fast", "fused")]
REFERENCE_PATH = ("grouped", "fast", "ref")  # the reference port's own computation


def path_id(path):
    return "-".join(path)


# --------------------------------------------------------------------------
# The reference port's parameter layout.


def test_every_manifest_is_checked(fixtures):
    found = sorted(p.name for p in (fixtures / "stylegan2").glob("generator_keys_*.json"))
    assert found == sorted(MANIFESTS)


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_state_dict_keys_shapes_and_kinds_match_the_reference(fixtures, manifest):
    spec = json.loads((fixtures / "stylegan2" / manifest).read_text())
    g = Generator(spec["size"], spec["style_dim"], spec["n_mlp"], channel_multiplier=spec["channel_multiplier"])
    parameters = {name for name, _ in g.named_parameters()}
    buffers = {name for name, _ in g.named_buffers()}
    state = g.state_dict()

    assert list(state) == [entry["key"] for entry in spec["state_dict"]]
    for entry in spec["state_dict"]:
        key = entry["key"]
        assert list(state[key].shape) == entry["shape"], key
        assert (key in parameters, key in buffers) == (entry["kind"] == "parameter", entry["kind"] == "buffer"), key


# --------------------------------------------------------------------------
# Golden outputs of the reference port (fixture README: fill rule and calls).


@pytest.fixture(scope="module")
def golden(fixtures):
    data = torch.load(fixtures / "stylegan2" / "golden_64_cm1.pt", weights_only=True)
    return golden_generator(data["size"], data["channel_multiplier"]), data


LATENTS = GOLDEN_LATENTS


def assert_golden(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL)


def test_fill_rule_reproduces_the_fixture_inputs(golden):
    _, d = golden
    for name in ("z", "z2", "w", "wplus"):
        assert torch.equal(golden_fill(name, d[name].shape), d[name]), name


@pytest.mark.parametrize("path", PATHS, ids=path_id)
@pytest.mark.parametrize("output", list(GOLDEN_CALLS))
def test_golden_outputs_on_every_path(golden, path, output):
    g, d = golden
    g.set_impl(*path)
    with torch.no_grad():
        image, latent = g(**GOLDEN_CALLS[output](d), noise=d["noise"], randomize_noise=False, return_latents=True)
    assert image.is_contiguous()
    assert_golden(image, d[output])
    if output in LATENTS:
        assert_golden(latent, d[LATENTS[output]])


@pytest.mark.parametrize("path", PATHS, ids=path_id)
def test_golden_output_of_one_sample_on_every_path(golden, path):
    # Batch 1 takes other branches (the grouped form is a plain convolution).
    g, d = golden
    g.set_impl(*path)
    with torch.no_grad():
        image, _ = g([d["z"][1:]], noise=[n[1:] for n in d["noise"]], randomize_noise=False)
    assert_golden(image, d["out_z"][1:])


def test_golden_outputs_when_the_batch_is_split_per_sample(golden, monkeypatch):
    # The golden generator (64 px) is below the split resolution; lower it so
    # that blocks 16..64 run one sample at a time.
    g, d = golden
    g.set_impl("auto", "fast", "fused")
    monkeypatch.setattr(stylegan2.model, "PER_SAMPLE_RESOLUTION", 16)
    z = d["z"]
    with torch.no_grad():
        assert per_sample_block(g, z[:, None].expand(-1, g.n_latent, -1)) == 1
        image, latent = g([z], noise=d["noise"], randomize_noise=False, return_latents=True)
        noise_buffers, _ = g([z[:1]], randomize_noise=False)
        torch.manual_seed(3)
        random_split, _ = g([z])
        monkeypatch.setattr(stylegan2.model, "PER_SAMPLE_RESOLUTION", 10**6)
        torch.manual_seed(3)
        random_batched, _ = g([z])
    assert_golden(image, d["out_z"])
    assert_golden(latent, d["latent_z"])
    # fresh noise is drawn up front with the values the batched path draws
    torch.testing.assert_close(random_split, random_batched, rtol=1e-4, atol=1e-3)
    assert noise_buffers.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("conv_impl", CONV_IMPLS)
def test_golden_output_with_autograd_on(golden, conv_impl):
    # "auto" may choose differently when gradients flow; the values must not change.
    g, d = golden
    g.set_impl(conv_impl, "fast", "fused")
    wplus = d["wplus"].clone().requires_grad_()
    image, _ = g([wplus], input_is_latent=True, noise=d["noise"], randomize_noise=False)
    assert_golden(image.detach(), d["out_wplus"])


# --------------------------------------------------------------------------
# The reference forward contract, on a tiny random generator.

TINY = dict(size=32, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)


def randomised(g, seed=0):
    """Every parameter random and O(1) (the default init zeroes the noise
    weights and biases, which would leave those terms untested)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in g.named_parameters():
            mapping_weight = name.startswith("style.") and name.endswith(".weight")  # stored as w / lr_mul
            p.copy_(torch.randn(p.shape, generator=gen) * (100 if mapping_weight else 0.5))
    return g


@pytest.fixture
def tiny():
    return randomised(Generator(**TINY)).eval()


def test_layer_counts(tiny):
    assert tiny.n_latent == 2 * int(math.log2(TINY["size"])) - 2 == 8
    assert tiny.num_layers == 1 + len(tiny.convs) == 7
    # conv1 reads slot 0, to_rgb1 slot 1, convs.j slot j + 1, the last to_rgb the last slot
    assert tiny.n_latent == 2 + len(tiny.convs)


def test_make_noise_matches_the_noise_buffers(tiny):
    noise = tiny.make_noise()
    buffers = [getattr(tiny.noises, f"noise_{i}") for i in range(tiny.num_layers)]
    assert len(noise) == tiny.num_layers
    assert [n.shape for n in noise] == [b.shape for b in buffers]


def test_randomize_noise_false_uses_the_noise_buffers(tiny):
    z = torch.randn(2, TINY["style_dim"])
    buffers = [getattr(tiny.noises, f"noise_{i}") for i in range(tiny.num_layers)]
    with torch.no_grad():
        fixed, _ = tiny([z], randomize_noise=False)
        explicit, _ = tiny([z], noise=buffers)
        fresh, _ = tiny([z])
    torch.testing.assert_close(fixed, explicit)
    assert not torch.allclose(fixed, fresh, atol=1e-3)


@pytest.mark.parametrize("path", PATHS, ids=path_id)
def test_random_noise_is_drawn_the_same_way_on_every_path(tiny, path):
    z = torch.randn(2, TINY["style_dim"])
    with torch.no_grad():
        torch.manual_seed(7)
        expected, _ = tiny.set_impl(*REFERENCE_PATH)([z])
        torch.manual_seed(7)
        actual, _ = tiny.set_impl(*path)([z])
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_w_plus_input_and_return_latents(tiny):
    z = torch.randn(3, TINY["style_dim"])
    w = tiny.style(z)
    wplus = w.unsqueeze(1).repeat(1, tiny.n_latent, 1)
    with torch.no_grad():
        from_z, latent = tiny([z], randomize_noise=False, return_latents=True)
        from_w, _ = tiny([w], input_is_latent=True, randomize_noise=False)
        from_wplus, latent_plus = tiny([wplus], input_is_latent=True, randomize_noise=False, return_latents=True)
        _, none = tiny([z], randomize_noise=False)
    assert none is None
    torch.testing.assert_close(latent, wplus)
    assert latent_plus is wplus
    torch.testing.assert_close(from_w, from_z)
    torch.testing.assert_close(from_wplus, from_z)
    assert from_z.shape == (3, 3, TINY["size"], TINY["size"])


def test_w_plus_slots_are_used_independently(tiny):
    # Changing one slot of W+ changes the image; a W+ code is not collapsed to W.
    wplus = torch.randn(1, tiny.n_latent, TINY["style_dim"])
    other = wplus.clone()
    other[:, -1] += 1
    with torch.no_grad():
        a, _ = tiny([wplus], input_is_latent=True, randomize_noise=False)
        b, _ = tiny([other], input_is_latent=True, randomize_noise=False)
    assert not torch.allclose(a, b, atol=1e-4)


def test_style_mixing_switches_codes_at_the_inject_index(tiny):
    z1, z2 = torch.randn(2, 1, TINY["style_dim"]).unbind(0)
    with torch.no_grad():
        _, latent = tiny([z1, z2], inject_index=3, randomize_noise=False, return_latents=True)
    w1, w2 = tiny.style(z1), tiny.style(z2)
    torch.testing.assert_close(latent[:, :3], w1.unsqueeze(1).expand(-1, 3, -1))
    torch.testing.assert_close(latent[:, 3:], w2.unsqueeze(1).expand(-1, tiny.n_latent - 3, -1))


def test_mean_latent_is_the_mean_of_mapped_gaussians(tiny):
    mean = tiny.mean_latent(64, generator=torch.Generator().manual_seed(3))
    z = torch.randn(64, TINY["style_dim"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tiny.style(z).mean(0, keepdim=True)
    assert mean.shape == (1, TINY["style_dim"])
    torch.testing.assert_close(mean, expected)


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match="W\\+ code with 8 slots"):
        tiny([torch.randn(1, 5, TINY["style_dim"])], input_is_latent=True)
    with pytest.raises(ValueError, match="truncation_latent"):
        tiny([torch.randn(1, TINY["style_dim"])], truncation=0.5)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        tiny.set_impl(conv_impl="fused")
    with pytest.raises(ValueError, match="epilogue must be one of"):
        tiny.set_impl(epilogue="fast")
    with pytest.raises(ValueError, match="power of two"):
        Generator(48)


def test_adaptable_layers_are_the_generator_modules_in_slot_order(tiny):
    layers = tiny.adaptable_layers()
    names = [name for name, _ in layers]
    assert names == ["conv1", "to_rgb1"] + [f"convs.{i}" for i in range(len(tiny.convs))]
    for name, module in layers:
        assert module is tiny.get_submodule(name)
    assert layers[0][1] is tiny.conv1 and layers[1][1] is tiny.to_rgb1 and layers[2][1] is tiny.convs[0]


# --------------------------------------------------------------------------
# Fast resampling against the reference forms.


@pytest.mark.parametrize("conv_impl", ["grouped", "shared"])
@pytest.mark.parametrize("direction", ["upsample", "downsample"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_resampling_equals_the_reference(conv_impl, direction, batch):
    layer = ModulatedConv2d(6, 5, 3, 8, **{direction: True})
    with torch.no_grad():
        layer.modulation.bias.normal_()
    x, style, bias = torch.randn(batch, 6, 9, 9), torch.randn(batch, 8), torch.randn(5)
    outputs = {}
    for resample, epilogue in itertools.product(RESAMPLE_IMPLS, EPILOGUES):
        layer.conv_impl, layer.resample, layer.epilogue = conv_impl, resample, epilogue
        with torch.no_grad():
            outputs[resample, epilogue] = layer(x, style, bias=bias, gain=1.5)
    expected = outputs["ref", "ref"]
    assert expected.shape == (batch, 5, 18 if direction == "upsample" else 4, 18 if direction == "upsample" else 4)
    for key, out in outputs.items():
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, msg=str(key))


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 3, 4), (2, 5, 1, 3, 7, 1), (1, 2, 1)])
def test_fast_skip_upsampling_equals_upfirdn2d(taps):
    # Asymmetric taps catch a missing kernel flip; odd lengths pad
    # asymmetrically by two and take the upfirdn2d fallback.
    up = Upsample(taps)
    x = torch.randn(2, 3, 7, 5)
    expected = upfirdn2d(x, up.kernel, up=2, pad=up.pad)
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = up(x.contiguous(memory_format=fmt), impl="fast")
        assert out.shape == (2, 3, 14, 10)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 3, 4)])
@pytest.mark.parametrize("pad", [0, 1, 2, 3, 4])
def test_fast_blur_with_bias_equals_upfirdn2d_plus_bias(taps, pad):
    blur = Blur(taps, pad=(pad, pad))  # pad 4 > k - 1 takes the upfirdn2d fallback
    x, bias = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last), torch.randn(4)
    expected = upfirdn2d(x, blur.kernel, pad=(pad, pad)) + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(blur(x, bias, impl="fast"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_fir_filter_gradients_are_exact_to_second_order(pad):
    # fir_filter has a hand-written backward (a depthwise correlation with the
    # flipped kernel); check it and its own derivative numerically.
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    fn = lambda x, bias: fir_filter(x, f, pad, bias)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, bias))
    assert torch.autograd.gradgradcheck(fn, (x, bias))


def test_fir_filter_rejects_a_pad_beyond_the_kernel():
    with pytest.raises(ValueError, match="exceeds kernel size - 1"):
        fir_filter(torch.zeros(1, 1, 8, 8), torch.ones(4, 4), 4)


# --------------------------------------------------------------------------
# Gradients agree between formulations.


def gradients(g, path, weights_trainable):
    g.set_impl(*path)
    g.requires_grad_(weights_trainable)
    g.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(1)
    wplus = torch.randn(2, g.n_latent, TINY["style_dim"], generator=gen).requires_grad_()
    noise = [torch.randn(2, *n.shape[1:], generator=gen) for n in g.make_noise()]
    image, _ = g([wplus], input_is_latent=True, noise=noise)
    weights = torch.randn(image.shape, generator=gen)
    (image * weights).sum().backward()
    grads = {"wplus": wplus.grad}
    grads.update({name: p.grad for name, p in g.named_parameters() if p.grad is not None})
    return image.detach(), grads


def assert_same_gradients(actual, expected, label):
    assert actual.keys() == expected.keys()
    for name, grad in actual.items():
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-5 * max(scale, 1.0), msg=f"{label} {name}")


@pytest.mark.parametrize("weights_trainable", [True, False], ids=["weights_and_wplus", "wplus_only"])
def test_gradients_agree_between_formulations(tiny, weights_trainable):
    tiny.train()
    expected_image, expected = gradients(tiny, REFERENCE_PATH, weights_trainable)
    synthesis = [name for name, _ in tiny.named_parameters() if not name.startswith("style.")]  # W+ skips the mapping
    assert sorted(expected) == sorted(["wplus"] + (synthesis if weights_trainable else []))
    for path in PATHS:
        image, grads = gradients(tiny, path, weights_trainable)
        torch.testing.assert_close(image, expected_image, rtol=1e-4, atol=1e-5, msg=str(path))
        assert_same_gradients(grads, expected, str(path))


@pytest.mark.parametrize("weights_trainable", [True, False], ids=["weights_and_wplus", "wplus_only"])
def test_gradients_agree_when_the_batch_is_split_per_sample(tiny, monkeypatch, weights_trainable):
    tiny.train()
    expected_image, expected = gradients(tiny, REFERENCE_PATH, weights_trainable)
    # Make the tiny generator take the split path (and, W+ only, the one-sample grouped layers).
    monkeypatch.setattr(stylegan2.model, "PER_SAMPLE_RESOLUTION", 16)
    monkeypatch.setattr(stylegan2.model, "WPLUS_SPLIT_SIZE", TINY["size"])
    monkeypatch.setattr(stylegan2.model, "WPLUS_GROUPED_INPUT", 8)
    tiny.set_impl("auto", "fast", "fused").requires_grad_(weights_trainable)
    with torch.enable_grad():
        assert per_sample_block(tiny, torch.zeros(2, tiny.n_latent, TINY["style_dim"])) == 1
    image, grads = gradients(tiny, ("auto", "fast", "fused"), weights_trainable)
    torch.testing.assert_close(image, expected_image, rtol=1e-4, atol=1e-5)
    assert_same_gradients(grads, expected, "split")


# --------------------------------------------------------------------------
# The automatic choices (their speed is measured by benchmarks/bench_generator.py).


def test_auto_conv_impl_rules_on_the_cpu():
    w3, w1 = torch.zeros(4, 2, 3, 3), torch.zeros(4, 2, 1, 1)
    one, batch = torch.zeros(1, 2, 8, 8), torch.zeros(3, 2, 8, 8)
    for grad in (False, True):  # nothing requires grad: autograd records nothing either way
        with torch.set_grad_enabled(grad):
            assert resolve_conv_impl("auto", one, w3) == "grouped"
            assert resolve_conv_impl("auto", batch, w1) == "grouped"
            assert resolve_conv_impl("auto", batch, w3) == "shared"
            assert resolve_conv_impl("shared", one, w3) == "shared"
            assert resolve_conv_impl("grouped", batch, w3) == "grouped"
    styles = torch.zeros(1, 2, requires_grad=True)
    assert resolve_conv_impl("auto", one, w3, styles) == "shared"  # W+ gradient only
    large = torch.zeros(1, 2, stylegan2.model.WPLUS_GROUPED_INPUT, stylegan2.model.WPLUS_GROUPED_INPUT)
    assert resolve_conv_impl("auto", large, w3, styles) == "grouped"  # ... except one large sample
    assert resolve_conv_impl("auto", large.expand(2, -1, -1, -1), w3, styles.expand(2, -1)) == "shared"
    assert resolve_conv_impl("auto", one, w3.requires_grad_(), styles) == "grouped"  # weights train too
    assert resolve_conv_impl("auto", one, w1, styles) == "grouped"
    with torch.no_grad():
        assert resolve_conv_impl("auto", one, torch.zeros(4, 2, 3, 3), styles) == "grouped"


def test_batch_split_rules():
    g = Generator(256, 32, 2, channel_multiplier=1, channel_max=8)
    wplus = torch.zeros(2, g.n_latent, 32)
    first_128px_block = [2 ** (j + 3) for j in range(len(g.to_rgbs))].index(stylegan2.model.PER_SAMPLE_RESOLUTION)
    with torch.no_grad():
        assert per_sample_block(g, wplus) == first_128px_block
        assert per_sample_block(g, wplus[:1]) is None
        assert per_sample_block(g.set_impl(conv_impl="shared"), wplus) is None
        assert per_sample_block(g.set_impl(conv_impl="auto", epilogue="ref"), wplus) is None
    g.set_impl(epilogue="fused")
    assert per_sample_block(g, wplus) == first_128px_block  # weights train: split
    g.requires_grad_(False)
    assert per_sample_block(g, wplus) is None  # W+ only: the batched backward skips weight gradients
    large = Generator(stylegan2.model.WPLUS_SPLIT_SIZE, 32, 2, channel_multiplier=1, channel_max=8).requires_grad_(False)
    wplus = torch.zeros(2, large.n_latent, 32)
    assert per_sample_block(large, wplus) == first_128px_block  # ... except at 1024 px


# --------------------------------------------------------------------------
# The benchmark's analytic FLOP count against PyTorch's own operation count.


def load_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generator.py"
    spec = importlib.util.spec_from_file_location("bench_generator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size", [16, 64])
def test_analytic_flop_count_matches_the_counted_convolutions(size):
    from torch.utils.flop_counter import FlopCounterMode

    g = Generator(size, 32, 2, channel_multiplier=1, channel_max=16).set_impl("auto", "fast", "fused")
    parts = load_benchmark().generator_flops(g)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        g([torch.randn(1, g.n_latent, 32)], input_is_latent=True)
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # at batch 1 every convolution, blur, ToRGB and skip upsampling is one aten.convolution
    assert counted["aten.convolution"] == parts["conv3x3"] + parts["blur"] + parts["to_rgb"] + parts["skip_upsample"]
