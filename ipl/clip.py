"""Frozen CLIP: loading, differentiable image preprocessing, and text encoding.

Features leave this module as float32 whatever the model's dtype, so losses
never see fp16. The text encoder is exposed at the level of token
*embeddings* so that learned prompt vectors can be spliced in, and it runs
on the shortest context that holds every end-of-text token: the attention
mask is causal and the feature is read at the EOT position, so the tokens
after it never influence the result.
"""

import difflib
import os
import urllib.error
import warnings
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torch import nn

with warnings.catch_warnings():
    # The clip package imports pkg_resources, which warns on import; the
    # warning is about the package, not about anything a user can change.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import clip
    from clip.model import CLIP, convert_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The 79 ImageNet prompt templates of the CLIP paper's zero-shot notebook,
# used by StyleGAN-NADA's directions and by IPL's domain regularisation.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


class ClipWeightsError(RuntimeError):
    """CLIP weights are missing and cannot be downloaded."""


# Architectures of randomly initialised CLIPs (clip.model.CLIP arguments).
# "tiny" keeps the real tokenizer, context and 224 px input with small widths
# and depths; "ViT-B/32" is the paper's model (for benchmarks: random weights
# cost the same time as trained ones).
RANDOM_ARCHS = {
    "tiny": dict(
        embed_dim=32,
        image_resolution=224,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=32,
        transformer_heads=2,
        transformer_layers=2,
    ),
    "ViT-B/32": dict(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=512,
        transformer_heads=8,
        transformer_layers=12,
    ),
}


def build_random_clip(arch="tiny", seed=0):
    """A randomly initialised CLIP of the package's own ``CLIP`` class.

    Every code path (tokens, EOT, preprocessing) is the one used with the
    released weights; only the values are random.
    """
    if arch not in RANDOM_ARCHS:
        raise ValueError(f"unknown random CLIP architecture {arch!r}: use one of {', '.join(RANDOM_ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(**RANDOM_ARCHS[arch])


def _resolve_dtype(dtype, device):
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16}[dtype]


def load_clip(name="ViT-B/32", device="cpu", dtype="auto", download_root="", seed=0):
    """Load a CLIP model, frozen, in an explicitly chosen dtype.

    Args:
        name: An OpenAI CLIP name (``clip.available_models()``), a path to a
            CLIP checkpoint, ``"tiny"`` or ``"random:<arch>"`` (random
            weights, see :func:`build_random_clip`).
        device: Where the model runs.
        dtype: ``"auto"`` (fp16 on CUDA as ``clip.load`` returns it there and
            as the authors ran it; fp32 on the CPU), ``"float32"`` or ``"float16"``.
        download_root: Folder of the weight files (default: the clip package's
            ``~/.cache/clip``); the package's own downloader fills it.
        seed: Initialisation seed of a random model.

    Returns:
        :class:`FrozenCLIP`.
    """
    check_clip_name(name)
    if name == "tiny" or name.startswith("random:"):
        model = build_random_clip(name.removeprefix("random:"), seed)
    else:
        root = download_root or os.path.expanduser("~/.cache/clip")
        try:
            # Loaded on the CPU (fp32), converted below on purpose.
            model, _ = clip.load(name, device="cpu", jit=False, download_root=root)
        except (urllib.error.URLError, OSError) as e:
            if name not in clip.available_models():
                raise _unreadable_file_error(name, e) from None
            raise _download_error(name, root, e) from None
        except Exception as e:  # a file of the user's that the package cannot read
            if name in clip.available_models():
                raise
            raise _unreadable_file_error(name, e) from None
    torch_dtype = _resolve_dtype(dtype, device)
    model = model.float()
    if torch_dtype == torch.float16:
        convert_weights(model)  # what clip.load does on CUDA
    return FrozenCLIP(model.to(device))


def _unreadable_file_error(name, e):
    from stylegan2.utils import load_error_summary, torch_file_problem

    # clip.load reads TorchScript archives and state dicts of its own CLIP class; a
    # readable file of another kind fails in its model builder (a missing key).
    problem = load_error_summary(e) if isinstance(e, (KeyError, AttributeError, TypeError)) else torch_file_problem(name, e)
    return ClipWeightsError(
        f"{name} is not a readable CLIP checkpoint ({problem}); use an OpenAI CLIP name "
        f"({', '.join(clip.available_models())}, downloaded on first use) or a file that clip.load reads"
    )


def _download_error(name, root, e):
    url = clip.clip._MODELS.get(name, "")
    target = Path(root) / os.path.basename(url) if url else Path(name)
    return ClipWeightsError(
        f"CLIP weights for {name!r} are not in {target} and could not be downloaded ({e}). "
        f"On a machine with internet, run the same command once to fill the cache, or download "
        f"{url or name} to {target} (set clip.download_root to use another folder)."
    )


def check_clip_name(name):
    """Raise :class:`ClipWeightsError` unless ``name`` is a CLIP that :func:`load_clip` can load (cheap: nothing is read).

    Scripts call it before building anything else, so that a misspelt name
    stops a run before the generator is downloaded.
    """
    if name == "tiny" or name in clip.available_models():
        return
    if name.startswith("random:"):
        if name.removeprefix("random:") not in RANDOM_ARCHS:
            raise ClipWeightsError(f"unknown random CLIP {name!r}: use one of {', '.join('random:' + a for a in RANDOM_ARCHS)} or 'tiny'")
        return
    path = Path(name).expanduser()
    if path.is_dir():
        raise ClipWeightsError(f"CLIP model {name!r} is a folder, not a checkpoint file; use an OpenAI CLIP name such as ViT-B/32 or a checkpoint file")
    if not path.is_file():
        close = difflib.get_close_matches(name, clip.available_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ClipWeightsError(
            f"unknown CLIP model {name!r}{hint}: use one of {', '.join(clip.available_models())}, "
            "a path to a CLIP checkpoint, 'tiny' or 'random:ViT-B/32'"
        )


class FrozenCLIP(nn.Module):
    """A CLIP model in eval mode with every weight frozen.

    Args:
        model: A ``clip.model.CLIP`` (possibly fp16).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.train(False)

    def train(self, mode=True):
        # Frozen: dropout-free anyway, but keep eval() whatever the caller does.
        return super().train(False)

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.token_embedding.weight.device

    @property
    def input_resolution(self):
        return self.model.visual.input_resolution

    @property
    def embed_dim(self):
        return self.model.text_projection.shape[1]

    @property
    def token_dim(self):
        """k: width of the token embeddings (512 for ViT-B/32)."""
        return self.model.token_embedding.weight.shape[1]

    @property
    def logit_scale(self):
        """exp(logit_scale) as a float32 scalar tensor (100 for the real models)."""
        return self.model.logit_scale.exp().float()

    # -- images ---------------------------------------------------------------

    def preprocess(self, images, antialias=False):
        """Generator images in [-1, 1] -> CLIP input, differentiably.

        [-1, 1] -> [0, 1], bicubic resize of the short side to the model's
        resolution, centre crop, CLIP mean/std normalisation (no PIL round
        trip). ``antialias=False`` is what the authors' torchvision did.
        """
        n = self.input_resolution
        x = (images + 1) / 2
        x = TF.resize(x, n, interpolation=TF.InterpolationMode.BICUBIC, antialias=antialias)
        x = TF.center_crop(x, [n, n])
        mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_images(self, images, antialias=False):
        """Un-normalised image features ``(B, D)`` (float32) of images in [-1, 1]."""
        x = self.preprocess(images, antialias=antialias)
        return self.model.encode_image(x.to(self.dtype)).float()

    # -- text -----------------------------------------------------------------

    def tokenize(self, texts):
        """Token ids ``(N, 77)`` on the model's device."""
        return clip.tokenize(list(texts)).to(self.device)

    def embed_tokens(self, tokens):
        """Token embeddings ``(N, L, k)`` in the model's dtype."""
        return self.model.token_embedding(tokens).to(self.dtype)

    def encode_embeddings(self, x, eot):
        """Text features from token embeddings, on the shortest exact context.

        Args:
            x: Token embeddings ``(N, L, k)`` (learned vectors may be spliced in).
            eot: Position of the end-of-text token of each row ``(N,)``.

        Returns:
            Un-normalised features ``(N, D)`` in float32.
        """
        length = int(eot.max()) + 1
        x = x[:, :length].to(self.dtype) + self.model.positional_embedding[:length].to(self.dtype)
        mask = self.model.transformer.resblocks[0].attn_mask
        mask = mask[:length, :length].to(device=x.device, dtype=x.dtype)
        x = x.permute(1, 0, 2)  # (L, N, k)
        for block in self.model.transformer.resblocks:
            # The package's block, with the causal mask cut to the context.
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        x = x.permute(1, 0, 2)  # (N, L, k)
        x = self.model.ln_final(x).to(self.dtype)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.model.text_projection
        return x.float()

    def encode_text(self, texts):
        """Un-normalised features ``(N, D)`` (float32) of a list of strings."""
        tokens = self.tokenize(texts)
        return self.encode_embeddings(self.embed_tokens(tokens), tokens.argmax(dim=-1))

    @torch.no_grad()
    def template_features(self, label, templates=IMAGENET_TEMPLATES):
        """Normalised features ``(T, D)`` of ``label`` in every template."""
        feats = self.encode_text([t.format(label) for t in templates])
        return feats / feats.norm(dim=-1, keepdim=True)
