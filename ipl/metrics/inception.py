"""Inception-v3 for IS (the full classifier) and SIFID (its stem).

Both metrics use torchvision's Inception-v3 with its ImageNet-1k weights
(``inception_v3_google-0cc3c7bd.pth``). Those weights are ported from
Google's TensorFlow model and expect inputs in [-1, 1]; torchvision's
``transform_input=True`` only exists to map ImageNet-normalised inputs there.
The metrics feed [-1, 1] images directly, so ``transform_input=False``.
"""

import torchvision
from torch import nn
from torchvision.models.inception import BasicConv2d

from .weights import load_state_dict_file, load_strict, resolve_weights

STEM_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")


def build_inception(aux_logits=True):
    """Randomly initialised torchvision Inception-v3 (1000 classes), in eval mode.

    ``aux_logits=True`` keeps the auxiliary head so that torchvision's
    published state dict loads strictly; in eval mode it is never run.
    """
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=aux_logits, init_weights=False, transform_input=False
    )
    return model.eval().requires_grad_(False)


def load_inception(path=None, *, device="cpu", download=False, weights_dir=None):
    """Inception-v3 with torchvision's ImageNet weights read from a local file.

    Args:
        path: the ``inception_v3_google-0cc3c7bd.pth`` file; when None it is
            looked up as described in ``ipl.metrics.weights``.
        device: where to put the network.
        download: fetch the file from download.pytorch.org if it is not found.
        weights_dir: directory searched by file name.

    Returns:
        the network in eval mode, gradients off.
    """
    file = resolve_weights("inception_v3", path, download=download, weights_dir=weights_dir)
    state = load_state_dict_file(file)
    model = build_inception(aux_logits=any(k.startswith("AuxLogits.") for k in state))
    return load_strict(model, state, "torchvision Inception-v3").to(device)


class InceptionStem(nn.Module):
    """Inception-v3 up to the 64-channel map just before its first max-pool.

    These are SIFID's features: ``Conv2d_1a_3x3`` (stride 2), ``Conv2d_2a_3x3``
    and ``Conv2d_2b_3x3`` (each conv + BatchNorm(eps=1e-3) + ReLU). Parameter
    names equal torchvision's, so the stem loads from a full Inception state
    dict (torchvision's or pytorch-fid's).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.eval().requires_grad_(False)

    @classmethod
    def from_inception(cls, inception):
        """The stem of an Inception3 network (its parameters are copied)."""
        stem = cls()
        load_strict(stem, _stem_state(inception.state_dict()), "Inception-v3 stem")
        return stem.to(next(inception.parameters()).device)

    def forward(self, images):
        """(B, 3, H, W) in [-1, 1] -> (B, 64, H', W'), H' = (H - 3) // 2 - 1."""
        x = self.Conv2d_1a_3x3(images)
        x = self.Conv2d_2a_3x3(x)
        return self.Conv2d_2b_3x3(x)


def _stem_state(state):
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in STEM_LAYERS}


def load_sifid_stem(path=None, *, weights="inception_v3", device="cpu", download=False, weights_dir=None):
    """SIFID's Inception stem read from a local weight file.

    Args:
        path: a full Inception-v3 state dict file.
        weights: registry key of the default file: ``"inception_v3"``
            (torchvision ImageNet weights, the default, as SinGAN's SIFID
            code used) or ``"fid_inception_v3"`` (pytorch-fid's FID weights).
        device, download, weights_dir: as for ``load_inception``.
    """
    if weights not in ("inception_v3", "fid_inception_v3"):
        raise ValueError(f"weights must be 'inception_v3' or 'fid_inception_v3', got {weights!r}")
    file = resolve_weights(weights, path, download=download, weights_dir=weights_dir)
    stem = InceptionStem()
    return load_strict(stem, _stem_state(load_state_dict_file(file)), "Inception-v3 stem").to(device)
