"""e4e / ReStyle-e4e checkpoints: the authors' key layouts load, and inversion equals their inference.

The checkpoints are random, narrow versions of the released files, built key
by key from the published layout (``encoder.*``, ``decoder.*``,
``latent_avg``, ``opts``; see ``inversion_checkpoints.py``). The reference forward below is written from the
tensors with torch.nn.functional only, following the authors' modules
(``bottleneck_IR_SE``, ``GradualStyleBlock``, ``Encoder4Editing.forward``,
``ProgressiveBackboneEncoder.forward``, ``run_on_batch``).
"""

import logging
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from inversion_checkpoints import (
    DECODER,
    N_STYLES,
    STAGES,
    STYLE_DIM,
    decoder_state,
    save_checkpoint,
)

from ipl.inversion import E4EEncoder, ReStyleEncoder, check_decoder, load_encoder
from ipl.inversion.images import encoder_input
from stylegan2 import CheckpointError, Generator

# ----------------------------------------------------------------------------
# The authors' forward, from the tensors


def ref_bn(x, s, p):
    return F.batch_norm(x, s[p + "running_mean"], s[p + "running_var"], s[p + "weight"], s[p + "bias"], training=False, eps=1e-5)


def ref_unit(x, s, p, c_in, depth, stride):
    if c_in == depth:
        shortcut = x[:, :, ::stride, ::stride]  # MaxPool2d(1, stride)
    else:
        shortcut = ref_bn(F.conv2d(x, s[p + "shortcut_layer.0.weight"], stride=stride), s, p + "shortcut_layer.1.")
    r = ref_bn(x, s, p + "res_layer.0.")
    r = F.prelu(F.conv2d(r, s[p + "res_layer.1.weight"], padding=1), s[p + "res_layer.2.weight"])
    r = ref_bn(F.conv2d(r, s[p + "res_layer.3.weight"], stride=stride, padding=1), s, p + "res_layer.4.")
    se = F.relu(F.conv2d(r.mean((2, 3), keepdim=True), s[p + "res_layer.5.fc1.weight"]))
    r = r * torch.sigmoid(F.conv2d(se, s[p + "res_layer.5.fc2.weight"]))
    return r + shortcut


def ref_backbone(x, s):
    """Outputs of all 24 units."""
    x = F.prelu(ref_bn(F.conv2d(x, s["input_layer.0.weight"], padding=1), s, "input_layer.1."), s["input_layer.2.weight"])
    outs, unit = [], 0
    for in_c, depth, n in STAGES:
        for k in range(n):
            x = ref_unit(x, s, f"body.{unit}.", in_c if k == 0 else depth, depth, 2 if k == 0 else 1)
            outs.append(x)
            unit += 1
    return outs


def ref_style(x, s, p, spatial):
    for j in range(int(math.log2(spatial))):
        x = F.leaky_relu(F.conv2d(x, s[p + f"convs.{2 * j}.weight"], s[p + f"convs.{2 * j}.bias"], stride=2, padding=1), 0.01)
    x = x.reshape(x.shape[0], -1)
    w = s[p + "linear.weight"]
    return x @ (w / math.sqrt(w.shape[1])).t() + s[p + "linear.bias"]  # EqualLinear, lr_mul 1


def ref_e4e(x, s):
    outs = ref_backbone(x, s)
    c1, c2, c3 = outs[6], outs[20], outs[23]  # the indices in Encoder4Editing.forward
    w0 = ref_style(c3, s, "styles.0.", 16)
    codes = [w0]
    for i in range(1, N_STYLES):
        if i == 3:
            p2 = F.interpolate(c3, size=c2.shape[-2:], mode="bilinear", align_corners=True) + F.conv2d(
                c2, s["latlayer1.weight"], s["latlayer1.bias"]
            )
            features, spatial = p2, 32
        elif i == 7:
            features = F.interpolate(p2, size=c1.shape[-2:], mode="bilinear", align_corners=True) + F.conv2d(
                c1, s["latlayer2.weight"], s["latlayer2.bias"]
            )
            spatial = 64
        elif i < 3:
            features, spatial = c3, 16
        codes.append(w0 + ref_style(features, s, f"styles.{i}.", spatial))
    return torch.stack(codes, 1)


def ref_restyle_pass(x, s):
    c = ref_backbone(x, s)[-1]
    w0 = ref_style(c, s, "styles.0.", 16)
    return torch.stack([w0] + [w0 + ref_style(c, s, f"styles.{i}.", 16) for i in range(1, N_STYLES)], 1)


def ref_decoder(state):
    """The checkpoint's decoder, built apart from the loader and run with the reference port's module chain."""
    g = Generator(**DECODER).set_impl(resample="ref", epilogue="ref")
    g.load_state_dict({k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")})
    return g.eval()


def images(batch=2, seed=3):
    return torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def close(a, b):
    """Equal up to float32 rounding, relative to the largest value (the random
    encoders' codes grow over the iterations, and with them the rounding)."""
    torch.testing.assert_close(a, b, rtol=0, atol=2e-4 * max(1.0, b.abs().max().item()))


# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    out = {}
    for kind in ("e4e", "restyle"):
        out[kind] = (root / f"{kind}.pt",) + save_checkpoint(root / f"{kind}.pt", kind, seed=1 if kind == "e4e" else 2)
    return out


def test_e4e_inversion_equals_the_authors_forward_plus_latent_avg(files):
    path, state, latent_avg = files["e4e"]
    encoder = load_encoder(path, "cpu")
    assert isinstance(encoder, E4EEncoder) and encoder.n_styles == N_STYLES
    x = images()
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    with torch.no_grad():
        expected = ref_e4e(x, encoder_state) + latent_avg  # get_latents with start_from_latent_avg
    wplus = encoder.invert(x)
    assert wplus.shape == (2, N_STYLES, STYLE_DIM)
    close(wplus, expected)
    # Slots differ, so each style block is used (a broadcast W code would pass a weaker check).
    assert (wplus[:, 1:] - wplus[:, :1]).abs().amax() > 1e-2


def test_e4e_without_start_from_latent_avg_returns_the_raw_offsets(tmp_path):
    path = tmp_path / "e4e.pt"
    state, _ = save_checkpoint(path, "e4e", start_from_latent_avg=False)
    x = images(1)
    with torch.no_grad():
        expected = ref_e4e(x, {k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    close(load_encoder(path).invert(x), expected)


def test_restyle_iterations_equal_the_authors_run_on_batch(files):
    path, state, latent_avg = files["restyle"]
    encoder = load_encoder(path, "cpu")
    assert isinstance(encoder, ReStyleEncoder)
    x = images()
    s = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    decoder = ref_decoder(state)
    expected_codes, expected_images = [], []
    with torch.no_grad():
        avg_image = F.adaptive_avg_pool2d(decoder([latent_avg[None]], input_is_latent=True, randomize_noise=False)[0], (256, 256))
        y_hat, latent = avg_image.repeat(2, 1, 1, 1), None
        for _ in range(5):
            codes = ref_restyle_pass(torch.cat([x, y_hat], 1), s)
            latent = codes + (latent_avg.repeat(2, 1, 1) if latent is None else latent)
            image = decoder([latent], input_is_latent=True, randomize_noise=False)[0]
            expected_codes.append(latent)
            expected_images.append(image)
            y_hat = F.adaptive_avg_pool2d(image, (256, 256))

    steps = encoder.invert_steps(x, iterations=5)
    assert len(steps) == 5
    for step, code, image in zip(steps, expected_codes, expected_images):
        close(step.wplus, code)
        close(step.image, image)
    close(encoder.invert(x), expected_codes[-1])  # the default is 5 iterations
    # Each iteration moves the code: the refinement is not a no-op.
    assert (expected_codes[1] - expected_codes[0]).abs().amax() > 1e-3


def test_one_image_is_inverted_the_same_alone_or_in_a_batch(files):
    encoder = load_encoder(files["restyle"][0])
    x = images(2)
    close(encoder.invert(x[1:2], iterations=2), encoder.invert(x, iterations=2)[1:2])


def test_decoder_loads_strictly_into_our_generator(files):
    path, state, _ = files["restyle"]
    decoder = load_encoder(path).decoder
    assert decoder.config["size"] == DECODER["size"] and decoder.n_latent == N_STYLES
    for key, value in decoder.state_dict().items():
        assert torch.equal(value, state[f"decoder.{key}"]), key


def test_wrong_inputs_are_refused(files):
    e4e = load_encoder(files["e4e"][0])
    with pytest.raises(ValueError, match="single pass"):
        e4e.invert(images(1), iterations=3)
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\)"):
        e4e.invert(torch.zeros(1, 3, 128, 128))


def test_unsupported_or_inconsistent_checkpoints_say_why(tmp_path, files):
    base = torch.load(files["restyle"][0], weights_only=True)

    def variant(name, **changes):
        torch.save({**base, **changes}, tmp_path / name)
        return tmp_path / name

    with pytest.raises(CheckpointError, match="GradualStyleEncoder.*not supported.*ProgressiveBackboneEncoder"):
        load_encoder(variant("psp.pt", opts={**base["opts"], "encoder_type": "GradualStyleEncoder"}))
    with pytest.raises(CheckpointError, match="output_size=64.*32 px"):
        load_encoder(variant("size.pt", opts={**base["opts"], "output_size": 64}))
    broken = {k: v for k, v in base["state_dict"].items() if k != "decoder.conv1.conv.weight"}
    with pytest.raises(CheckpointError, match="conv1.conv.weight"):
        load_encoder(variant("decoder.pt", state_dict=broken))
    no_unit = {k: v for k, v in base["state_dict"].items() if not k.startswith("encoder.body.5.res_layer.3")}
    with pytest.raises(CheckpointError, match="missing keys: body.5.res_layer.3.weight"):
        load_encoder(variant("encoder.pt", state_dict=no_unit))
    with pytest.raises(CheckpointError, match="latent_avg"):
        load_encoder(variant("nolatent.pt", latent_avg=None))
    with pytest.raises(CheckpointError, match="encoder_type"):
        load_encoder(variant("noopts.pt", opts=None))
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "nowhere.pt")


class OptionBag:
    """Stands for an object a real file might pickle (refused by weights_only loading)."""

    built = 0

    def __init__(self, **kw):
        OptionBag.built += 1
        self.__dict__.update(kw)


def test_files_that_pickle_other_objects_go_through_the_code_free_reader(tmp_path, files, monkeypatch):
    base = torch.load(files["e4e"][0], weights_only=True)
    path = tmp_path / "option_object.pt"
    torch.save({**base, "opts": OptionBag(**base["opts"])}, path)
    with pytest.raises(Exception, match="OptionBag"):
        torch.load(path, weights_only=True)  # the file is one that the safe loader refuses

    OptionBag.built = 0
    encoder = load_encoder(path)  # read by ipl.safe_load: the options come from the placeholder's state
    assert isinstance(encoder, E4EEncoder) and encoder.add_latent_avg
    assert OptionBag.built == 0  # nothing from the file ran: the class was never instantiated
    x = images(1)
    close(encoder.invert(x), load_encoder(files["e4e"][0]).invert(x))

    monkeypatch.setitem(sys.modules, "ipl.safe_load", None)  # not available: a clear error, no unsafe fallback
    with pytest.raises(CheckpointError, match=r"OptionBag.*ipl.safe_load"):
        load_encoder(path)


def test_decoder_check_warns_when_the_codes_would_be_rendered_by_another_generator(files, caplog):
    path, state, _ = files["restyle"]
    encoder = load_encoder(path)
    same = Generator(**DECODER)
    same.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
    with caplog.at_level(logging.INFO, logger="ipl.inversion.encoders"):
        result = check_decoder(encoder, same, "ffhq")
    assert result.matches and result.weights == 0 and not caplog.records

    other = Generator(**DECODER)
    other.load_state_dict(decoder_state(seed=5))
    with caplog.at_level(logging.WARNING, logger="ipl.inversion.encoders"):
        result = check_decoder(encoder, other, "my_source.pt")
    assert not result.matches and result.weights > 0.1
    message = caplog.records[-1].getMessage()
    assert "restyle encoder" in message and str(path) in message and "my_source.pt" in message

    caplog.clear()
    narrow = Generator(**{**DECODER, "size": 64})
    with caplog.at_level(logging.WARNING, logger="ipl.inversion.encoders"):
        result = check_decoder(encoder, narrow, "big.pt")
    assert result.architecture and "size: 32 in the decoder, 64 in the generator" in caplog.records[-1].getMessage()


def test_encoder_input_is_the_authors_inference_transform():
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    array = (torch.rand(300, 280, 3, generator=gen) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(array)
    x = encoder_input(image)
    resized = torch.from_numpy(np.array(image.resize((256, 256), Image.Resampling.BILINEAR))).float()
    expected = (resized.permute(2, 0, 1)[None] / 255 - 0.5) / 0.5  # ToTensor, Normalize([0.5] * 3, [0.5] * 3)
    assert x.shape == (1, 3, 256, 256) and torch.equal(x, expected)
    assert x.min() >= -1 and x.max() <= 1
