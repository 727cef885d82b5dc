"""ArcFace IR-SE50 face embedding, as used for ID losses and metrics.

The architecture of ``Backbone(input_size=112, num_layers=50, mode="ir_se")``
from TreB1eN/InsightFace_Pytorch, reused by pSp, e4e and StyleGAN-NADA with
their ``model_ir_se50.pth``; parameter names follow it so that file loads:

- ``input_layer``: conv3x3(3->64, no bias), BatchNorm2d, PReLU;
- ``body``: 24 bottleneck units in 4 stages of (3, 4, 14, 3) units with depth
  (64, 128, 256, 512), the first unit of each stage with stride 2. A unit is
  ``res_layer`` = BN(in), conv3x3(in->d), PReLU(d), conv3x3(d->d, stride),
  BN(d), squeeze-excitation (1x1 convs ``fc1``: d->d/16 and ``fc2``: d/16->d,
  no bias) plus ``shortcut_layer`` = MaxPool2d(1, stride) when in == d, else
  conv1x1(stride, no bias) + BN;
- ``output_layer``: BatchNorm2d(512), Dropout, Flatten,
  Linear(512*7*7 -> 512), BatchNorm1d(512); the embedding is L2-normalised.

Preprocessing (pSp's ``IDLoss``): images in [-1, 1] at 256x256 (larger
images are area-averaged to 256, as StyleCLIP/NADA-style ID code does with
``AdaptiveAvgPool2d(256)``), crop ``[35:223, 32:220]`` (the face region of an
FFHQ-aligned image), adaptive average pool to 112x112.

The stem and the bottleneck stages (``ir_se_input_layer``, ``ir_se_body``)
are also the backbone of the e4e and ReStyle encoders (``ipl.inversion``),
which keep the same parameter names under their ``encoder.`` prefix.
"""

import torch.nn.functional as F
from torch import nn

from .weights import load_state_dict_file, load_strict, resolve_weights

# (in channels, depth, number of units) of each IR-SE50 stage.
IR_SE50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
FACE_CROP = (slice(35, 223), slice(32, 220))  # rows, columns of a 256x256 image


class SEModule(nn.Module):
    """Squeeze-excitation: channel weights from globally pooled features."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        weights = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # (B, C, 1, 1)
        return x * weights


class BottleneckIRSE(nn.Module):
    """Improved-residual unit with squeeze-excitation."""

    def __init__(self, in_channels, depth, stride):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, reduction=16),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_se_input_layer(in_channels=3, width=64):
    """The stem of an IR-SE network: conv3x3(in_channels -> width, no bias), BatchNorm2d, PReLU.

    ``(B, in_channels, H, W) -> (B, width, H, W)``. ArcFace reads RGB
    (3 channels); ReStyle's encoder reads an image and a reconstruction (6).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.PReLU(width),
    )


def ir_se_body(stages=IR_SE50_STAGES):
    """The bottleneck units of an IR-SE network, as one ``nn.Sequential``.

    Args:
        stages: ``(in_channels, depth, num_units)`` per stage; the first unit
            of each stage has stride 2, so each stage halves the resolution.
            ``IR_SE50_STAGES`` is IR-SE50; other widths give small networks
            of the same structure for tests (depths of at least 16 keep the
            squeeze-excitation's ``depth // 16`` channels non-empty).

    Returns:
        ``(B, stages[0][0], H, W) -> (B, stages[-1][1], H / 2^S, W / 2^S)``
        with units named ``0 ... sum(num_units) - 1``.
    """
    units = []
    for in_channels, depth, num_units in stages:
        units.append(BottleneckIRSE(in_channels, depth, stride=2))
        units += [BottleneckIRSE(depth, depth, stride=1) for _ in range(num_units - 1)]
    return nn.Sequential(*units)


class IRSE50(nn.Module):
    """IR-SE50 face embedding: (B, 3, 112, 112) in [-1, 1] -> (B, 512), unit norm."""

    def __init__(self, drop_ratio=0.6):
        super().__init__()
        self.input_layer = ir_se_input_layer(3, 64)
        self.body = ir_se_body(IR_SE50_STAGES)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=True),
        )
        self.eval().requires_grad_(False)

    def forward(self, faces):
        x = self.body(self.input_layer(faces))  # (B, 512, 7, 7)
        return F.normalize(self.output_layer(x), dim=1)


def arcface_preprocess(images, clamp=True):
    """(B, 3, H, W) in [-1, 1] -> (B, 3, 112, 112) face crops (pSp's ID preprocessing).

    ``clamp=False`` crops the images as given, as DiffusionCLIP's IDLoss does.
    """
    x = images.clamp(-1, 1) if clamp else images
    if tuple(x.shape[-2:]) != (256, 256):
        x = F.adaptive_avg_pool2d(x, (256, 256))
    x = x[:, :, FACE_CROP[0], FACE_CROP[1]]  # (B, 3, 188, 188)
    return F.adaptive_avg_pool2d(x, (112, 112))


class ArcFaceExtractor(nn.Module):
    """Images in [-1, 1] -> L2-normalised IR-SE50 identity embeddings (B, 512)."""

    def __init__(self, backbone, clamp=True):
        super().__init__()
        self.backbone = backbone
        self.clamp = clamp  # clamp the images to [-1, 1] before the crop

    def forward(self, images):
        return self.backbone(arcface_preprocess(images, self.clamp))


def load_arcface(path=None, *, device="cpu", weights_dir=None):
    """``ArcFaceExtractor`` around IR-SE50 read from ``model_ir_se50.pth``.

    The file has no direct download URL (it is shared from Google Drive, see
    ``WEIGHTS["arcface_ir_se50"]``), so it must be fetched by hand.
    """
    file = resolve_weights("arcface_ir_se50", path, weights_dir=weights_dir)
    backbone = load_strict(IRSE50(), load_state_dict_file(file), "ArcFace IR-SE50")
    return ArcFaceExtractor(backbone).eval().to(device)
