"""CLIP wrapper: preprocessing, batched/truncated text encoding, prompt splicing."""

import numpy as np
import pytest
import torch
from PIL import Image

from ipl.clip import IMAGENET_TEMPLATES, ClipWeightsError, build_random_clip, load_clip
from ipl.method.prompts import PromptTextEncoder, check_ctx_init


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip("tiny", device="cpu", seed=0)


def full_context_features(clip_model, embeddings, eot):
    """The authors' computation: all 77 positions through the package's own blocks."""
    m = clip_model.model
    x = embeddings + m.positional_embedding
    x = m.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = m.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ m.text_projection


def test_text_encoder_truncation_is_exact(tiny_clip):
    torch.manual_seed(1)
    encoder = PromptTextEncoder(tiny_clip, "a photo of a", ["human", "tolkien elf"])
    ctx = torch.randn(5, 4, tiny_clip.token_dim) * 0.1
    ours = encoder(ctx)  # (2, 5, D), context cut to the longest [EOS]
    assert encoder.prefix.shape[1] + 4 + encoder.suffix.shape[1] < 77

    tokens = tiny_clip.tokenize(["a photo of a human", "a photo of a tolkien elf"])
    full = tiny_clip.embed_tokens(tokens)  # (2, 77, k)
    for label in range(2):
        emb = full[label].expand(5, -1, -1).clone()
        emb[:, 1:5] = ctx
        ref = full_context_features(tiny_clip, emb, tokens[label].argmax().expand(5))
        torch.testing.assert_close(ours[label], ref, rtol=1e-5, atol=1e-6)


def test_real_token_vectors_reproduce_encode_text(tiny_clip):
    encoder = PromptTextEncoder(tiny_clip, "a photo of a", ["tolkien elf"])
    tokens = tiny_clip.tokenize(["a photo of a"])
    ctx = tiny_clip.embed_tokens(tokens)[:, 1:5]  # the real embeddings of "a photo of a"
    ours = encoder(ctx)[0]
    ref = tiny_clip.model.encode_text(tiny_clip.tokenize(["a photo of a tolkien elf"]))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_encode_text_matches_package(tiny_clip):
    texts = [t.format("werewolf") for t in IMAGENET_TEMPLATES[:7]]
    ref = tiny_clip.model.encode_text(tiny_clip.tokenize(texts))
    torch.testing.assert_close(tiny_clip.encode_text(texts), ref, rtol=1e-5, atol=1e-6)
    feats = tiny_clip.template_features("werewolf")
    assert feats.shape == (79, tiny_clip.embed_dim)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(79))


def test_prompt_gradients_reach_the_vectors_only(tiny_clip):
    encoder = PromptTextEncoder(tiny_clip, "a photo of a", ["photo", "disney"])
    ctx = torch.randn(3, 4, tiny_clip.token_dim, requires_grad=True)
    encoder(ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_clip.parameters())


def test_ctx_init_words_must_be_single_tokens(tiny_clip):
    assert check_ctx_init(tiny_clip, "a photo of a") == 4
    with pytest.raises(ValueError, match="single tokens"):
        check_ctx_init(tiny_clip, "a photograph of ukiyoe")


def test_preprocessing_matches_the_package_pil_pipeline(tiny_clip):
    # The package preprocesses PIL images: bicubic resize with antialiasing,
    # centre crop, to tensor, normalise. Ours works on tensors in [-1, 1].
    from clip.clip import _transform

    rng = np.random.default_rng(0)
    # A smooth image with some structure, quantised to uint8 as PIL needs.
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    rgb = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 0.5 + 0.5
    rgb = (rgb * 255 + rng.uniform(-8, 8, rgb.shape)).clip(0, 255).astype(np.uint8)
    ref = _transform(224)(Image.fromarray(rgb))[None]

    images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    ours = tiny_clip.preprocess(images, antialias=True)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    # PIL resamples in fixed point and rounds to uint8 (about 1/255 per
    # pixel, ~0.015 after dividing by CLIP's std); a different resampling
    # kernel or centring would be off by far more.
    diff = (ours - ref).abs()
    assert diff.max() < 0.05 and diff.mean() < 0.01
    # The authors' (non-antialiased) resize is a different function, visibly so
    # when downsampling a detailed image.
    noisy = torch.rand(1, 3, 512, 512) * 2 - 1
    diff = tiny_clip.preprocess(noisy, antialias=False) - tiny_clip.preprocess(noisy, antialias=True)
    assert diff.abs().mean() > 0.05


def test_tiny_clip_is_deterministic_and_frozen():
    a, b = build_random_clip(seed=4), build_random_clip(seed=4)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    model = load_clip("tiny")
    assert not model.model.training
    model.train()
    assert not model.model.training


def test_missing_clip_weights_error_names_the_location(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    import urllib.error

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ClipWeightsError) as e:
        load_clip("ViT-B/32", download_root=str(tmp_path))
    assert str(tmp_path / "ViT-B-32.pt") in str(e.value)
    with pytest.raises(ClipWeightsError, match="unknown CLIP model"):
        load_clip("ViT-Z/99")


def test_dtype_is_explicit_and_features_leave_as_float32():
    # "auto" follows the authors: fp16 on CUDA (what clip.load returns there), fp32 on the CPU.
    assert load_clip("tiny", device="cpu").dtype == torch.float32
    half = load_clip("tiny", dtype="float16")
    assert half.dtype == torch.float16
    assert half.model.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float16
    full = load_clip("tiny", dtype="float32")
    text = ["a photo of a tolkien elf"]
    f16, f32 = half.encode_text(text), full.encode_text(text)
    assert f16.dtype == torch.float32
    torch.testing.assert_close(f16, f32, rtol=2e-2, atol=2e-2)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert half.encode_images(images).dtype == torch.float32
