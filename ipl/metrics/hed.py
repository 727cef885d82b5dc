"""HED edge detector (Xie & Tu, 2015) in the layout of sniklaus/pytorch-hed.

VGG16's five convolution stages (stage k > 1 starts with a 2x2 max-pool),
one 1x1 "score" convolution per stage giving a side output, each side output
bilinearly upsampled to the input size (align_corners=False), and a 1x1
convolution over the 5 side outputs followed by a sigmoid (the fused edge
map). Parameter names follow the port (``netVggOne.0.weight``, ...,
``netCombine.0.weight``), so its published BSDS500 file
``network-bsds500.pytorch`` loads; that file still uses the port's older
``moduleVggOne...`` names, which ``load_hed`` renames.

The weights come from the original Caffe model, which takes BGR images in
[0, 255] minus the per-channel BSDS mean; ``HED`` takes RGB images in
[-1, 1] and converts them (``caffe_input``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_state_dict_file, load_strict, rename_keys, resolve_weights

# Per-channel mean of the Caffe HED model, in B, G, R order, on the 0..255 scale.
HED_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)

# (name suffix, in channels, out channels, number of 3x3 convolutions) of VGG16.
VGG16_STAGES = (
    ("One", 3, 64, 2),
    ("Two", 64, 128, 2),
    ("Thr", 128, 256, 3),
    ("Fou", 256, 512, 3),
    ("Fiv", 512, 512, 3),
)


def _vgg_stage(in_channels, out_channels, num_convs, pool_first):
    layers = [nn.MaxPool2d(kernel_size=2, stride=2)] if pool_first else []
    for i in range(num_convs):
        layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 1, 1))
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class HED(nn.Module):
    """HED network: RGB images in [-1, 1] -> fused edge probabilities in (0, 1)."""

    def __init__(self):
        super().__init__()
        for index, (suffix, c_in, c_out, n) in enumerate(VGG16_STAGES):
            setattr(self, f"netVgg{suffix}", _vgg_stage(c_in, c_out, n, pool_first=index > 0))
        for suffix, _, c_out, _ in VGG16_STAGES:
            setattr(self, f"netScore{suffix}", nn.Conv2d(c_out, 1, kernel_size=1))
        self.netCombine = nn.Sequential(nn.Conv2d(len(VGG16_STAGES), 1, kernel_size=1), nn.Sigmoid())
        self.register_buffer("bgr_mean", torch.tensor(HED_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def caffe_input(self, images):
        """RGB [-1, 1] -> BGR on the 0..255 scale minus the BSDS mean."""
        bgr = images.flip(1)  # (B, 3, H, W), channels R, G, B -> B, G, R
        return (bgr + 1) * 127.5 - self.bgr_mean

    def forward(self, images):
        """(B, 3, H, W) RGB in [-1, 1] -> (B, 1, H, W) fused edge map in (0, 1)."""
        x = self.caffe_input(images)
        size = x.shape[-2:]
        side_outputs = []
        for suffix, *_ in VGG16_STAGES:
            x = getattr(self, f"netVgg{suffix}")(x)
            score = getattr(self, f"netScore{suffix}")(x)  # (B, 1, h, w)
            side_outputs.append(F.interpolate(score, size=size, mode="bilinear", align_corners=False))
        return self.netCombine(torch.cat(side_outputs, dim=1))


def load_hed(path=None, *, device="cpu", download=False, weights_dir=None):
    """HED with the BSDS500 weights of sniklaus/pytorch-hed from a local file.

    Args:
        path: ``network-bsds500.pytorch``; when None it is looked up as
            described in ``ipl.metrics.weights``.
        device: where to put the network.
        download: fetch the file from the port's URL if it is not found.
    """
    file = resolve_weights("hed_bsds500", path, download=download, weights_dir=weights_dir)
    # The published file predates the port's rename of "moduleX" to "netX".
    state = rename_keys(load_state_dict_file(file), r"^module(?=[A-Z])", "net")
    return load_strict(HED(), state, "HED (pytorch-hed)").to(device)
