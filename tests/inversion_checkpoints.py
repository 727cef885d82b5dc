"""Random e4e / ReStyle-e4e checkpoints in the authors' key layout, narrow, for the inversion tests.

Built key by key from the published layout (not from our modules), so that a
name our encoders get wrong fails to load.
"""

import math

import torch

from stylegan2 import Generator

# IR-SE50's unit counts (3, 4, 14, 3), narrow widths. The first unit of three
# stages changes the width (convolution shortcut), every other unit keeps it
# (max-pool shortcut); the last stage is wider than W, as the style blocks'
# first convolution must then map 32 channels to 16.
STAGES = ((16, 16, 3), (16, 32, 4), (32, 16, 14), (16, 32, 3))
STYLE_DIM = 16
DECODER = dict(size=32, style_dim=STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=16)
N_STYLES = 2 * int(math.log2(DECODER["size"])) - 2  # 8: coarse, middle and fine e4e slots


def decoder_state(seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(**DECODER)
        with torch.no_grad():
            for name, p in g.named_parameters():
                if name.endswith("noise.weight"):
                    p.fill_(0.1)
    return g.state_dict()


def _bn(state, prefix, channels, gen):
    state[prefix + "weight"] = 1 + 0.1 * torch.randn(channels, generator=gen)
    state[prefix + "bias"] = 0.1 * torch.randn(channels, generator=gen)
    state[prefix + "running_mean"] = 0.1 * torch.randn(channels, generator=gen)
    state[prefix + "running_var"] = 0.5 + torch.rand(channels, generator=gen)
    state[prefix + "num_batches_tracked"] = torch.tensor(7)


def _conv(shape, gen, bias=False):
    weight = torch.randn(shape, generator=gen) / math.sqrt(shape[1] * shape[2] * shape[3])
    return (weight, 0.1 * torch.randn(shape[0], generator=gen)) if bias else weight


def encoder_state(kind, seed, input_channels):
    """A random encoder in the authors' parameter names (without the ``encoder.`` prefix)."""
    gen = torch.Generator().manual_seed(seed)
    s = {}
    width = STAGES[0][0]
    s["input_layer.0.weight"] = _conv((width, input_channels, 3, 3), gen)
    _bn(s, "input_layer.1.", width, gen)
    s["input_layer.2.weight"] = 0.25 * torch.rand(width, generator=gen)
    unit = 0
    for in_c, depth, n in STAGES:
        for k in range(n):
            c_in = in_c if k == 0 else depth
            p = f"body.{unit}."
            if c_in != depth:
                s[p + "shortcut_layer.0.weight"] = _conv((depth, c_in, 1, 1), gen)
                _bn(s, p + "shortcut_layer.1.", depth, gen)
            _bn(s, p + "res_layer.0.", c_in, gen)
            s[p + "res_layer.1.weight"] = _conv((depth, c_in, 3, 3), gen)
            s[p + "res_layer.2.weight"] = 0.25 * torch.rand(depth, generator=gen)
            s[p + "res_layer.3.weight"] = _conv((depth, depth, 3, 3), gen)
            _bn(s, p + "res_layer.4.", depth, gen)
            s[p + "res_layer.5.fc1.weight"] = _conv((depth // 16, depth, 1, 1), gen)
            s[p + "res_layer.5.fc2.weight"] = _conv((depth, depth // 16, 1, 1), gen)
            unit += 1
    top = STAGES[3][1]
    for i in range(N_STYLES):
        spatial = 16 if (kind == "restyle" or i < 3) else (32 if i < 7 else 64)
        for j in range(int(math.log2(spatial))):
            s[f"styles.{i}.convs.{2 * j}.weight"], s[f"styles.{i}.convs.{2 * j}.bias"] = _conv(
                (STYLE_DIM, top if j == 0 else STYLE_DIM, 3, 3), gen, bias=True
            )
        s[f"styles.{i}.linear.weight"] = torch.randn(STYLE_DIM, STYLE_DIM, generator=gen)
        s[f"styles.{i}.linear.bias"] = 0.1 * torch.randn(STYLE_DIM, generator=gen)
    if kind == "e4e":
        s["latlayer1.weight"], s["latlayer1.bias"] = _conv((top, STAGES[2][1], 1, 1), gen, bias=True)
        s["latlayer2.weight"], s["latlayer2.bias"] = _conv((top, STAGES[1][1], 1, 1), gen, bias=True)
    return s


def save_checkpoint(path, kind, seed=0, decoder_seed=0, decoder=None, **opts_changes):
    """A file in the layout of e4e_ffhq_encode.pt / restyle_e4e_ffhq_encode.pt.

    ``decoder``: the decoder's state dict (default: a random tiny generator
    from ``decoder_seed``); ``opts_changes`` replace options.
    """
    input_channels = 6 if kind == "restyle" else 3
    state = {f"encoder.{k}": v for k, v in encoder_state(kind, seed, input_channels).items()}
    state.update({f"decoder.{k}": v for k, v in (decoder if decoder is not None else decoder_state(decoder_seed)).items()})
    if kind == "restyle":
        opts = {"encoder_type": "ProgressiveBackboneEncoder", "input_nc": 6, "output_size": DECODER["size"],
                "n_iters_per_batch": 5, "dataset_type": "ffhq_encode", "start_from_latent_avg": False}  # fmt: skip
    else:
        opts = {"encoder_type": "Encoder4Editing", "stylegan_size": DECODER["size"], "start_from_latent_avg": True,
                "dataset_type": "ffhq_encode", "progressive_steps": [0, 20000, 22000]}  # fmt: skip
    opts.update(opts_changes)
    latent_avg = 0.3 * torch.randn(STYLE_DIM, generator=torch.Generator().manual_seed(seed + 100))
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg.repeat(N_STYLES, 1)}, path)
    return state, latent_avg.repeat(N_STYLES, 1)
