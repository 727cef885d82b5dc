"""Stage 1: mapper architecture, source-feature bank, training loop, resume, divergence."""

import pytest
import torch
from helpers import Tiny, naive_equal_linear, tiny_config

import ipl.stages.stage1 as stage1
from ipl.backends.stylegan2 import SourceBank, bank_fields, build_bank, build_stage1_bank, latents_to_w, render_features
from ipl.config import MapperConfig
from ipl.method.mapper import FixedPrompts, LatentMapper, build_prompt_model
from ipl.runtime import LatentSampler, TrainingDiverged


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Tiny(tiny_config(tmp_path_factory.mktemp("tiny")))


def test_mapper_is_the_official_architecture():
    torch.manual_seed(0)
    mapper = LatentMapper(w_dim=8, n_ctx=4, token_dim=6, n_hidden=3, hidden_dim=10, lr_mul=0.01)
    with torch.no_grad():
        for p in mapper.parameters():  # non-zero biases, so that they are exercised
            p.add_(torch.randn_like(p) * (100 if p.ndim == 2 else 1))
    w = torch.randn(5, 8)
    x = w * torch.rsqrt((w**2).mean(1, keepdim=True) + 1e-8)  # PixelNorm
    layers = list(mapper.mapping)[1:]
    assert len(layers) == 4 and all(layer.lr_mul == 0.01 and layer.activation for layer in layers)
    for layer in layers:  # every layer, the last included, ends in the scaled leaky ReLU
        x = naive_equal_linear(x, layer)
    out = mapper(w)
    assert out.shape == (5, 4, 6)
    torch.testing.assert_close(out, x.view(5, 4, 6))
    assert (out < 0).any()  # the leaky ReLU lets negative prompt entries through, scaled


def test_prompt_schemes_build_what_they_say():
    cfg = MapperConfig(hidden_dim=8)
    a = build_prompt_model("adaptive", 8, 4, 6, cfg, seed=3)
    r = build_prompt_model("random", 8, 4, 6, cfg, seed=3)
    # "random" is the adaptive mapper as initialised, before any training.
    for p, q in zip(a.parameters(), r.parameters()):
        assert torch.equal(p, q)
    init = torch.randn(4, 6)
    fixed = build_prompt_model("learned_fixed", 8, 4, 6, cfg, init)
    assert isinstance(fixed, FixedPrompts)
    out = fixed(torch.randn(3, 8))
    assert torch.equal(out[0], init) and torch.equal(out[0], out[2])


def test_bank_holds_the_latents_a_fresh_run_draws(tiny, tmp_path):
    G, clip_model, cfg = tiny.generator, tiny.clip, tiny.config
    fields = bank_fields(cfg, tiny.info, clip_model)
    bank = build_bank(tmp_path / "b.pt", fields, G, clip_model, steps=3, batch=4, seed=7, progress=False)
    sampler = LatentSampler(7, 4, G.style_dim)
    for step in range(3):
        w, feats = bank.batch(step, 4, "cpu")
        torch.testing.assert_close(w, latents_to_w(G, sampler()))
        assert feats.shape == (4, clip_model.embed_dim) and torch.isfinite(feats).all()
    with pytest.raises(IndexError, match="holds 12 pairs"):
        bank.batch(3, 4, "cpu")


def test_bank_features_are_the_clip_features_of_the_rendered_images(tiny, tmp_path):
    G = Tiny(tiny_config(tmp_path)).generator
    with torch.no_grad():  # without noise the render is deterministic
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.zero_()
    fields = {"test": "no-noise"}
    bank = build_bank(tmp_path / "b.pt", fields, G, tiny.clip, steps=2, batch=3, seed=1, chunk=2, progress=False)
    images = G([bank.w], input_is_latent=True)[0]
    torch.testing.assert_close(bank.features, tiny.clip.encode_images(images), rtol=1e-4, atol=1e-5)


def test_bank_is_reused_extended_and_keyed(tiny, tmp_path, monkeypatch):
    G, clip_model = tiny.generator, tiny.clip
    calls = []
    real = render_features

    def counting(generator, clip, w, chunk, antialias=False):
        calls.append(w.shape[0])
        return real(generator, clip, w, chunk, antialias)

    monkeypatch.setattr("ipl.backends.stylegan2.bank.render_features", counting)
    path, fields = tmp_path / "b.pt", {"k": 1}
    first = build_bank(path, fields, G, clip_model, steps=2, batch=4, seed=5, progress=False)
    assert sum(calls) == 8
    calls.clear()
    again = build_bank(path, fields, G, clip_model, steps=1, batch=4, seed=5, progress=False)
    assert calls == [] and torch.equal(again.w, first.w)  # a shorter run reuses it whole
    rebuilt = build_bank(tmp_path / "other.pt", fields, G, clip_model, steps=2, batch=4, seed=5, progress=False)
    assert torch.equal(rebuilt.features, first.features)  # rendering noise is seeded too
    calls.clear()
    longer = build_bank(path, fields, G, clip_model, steps=3, batch=4, seed=5, progress=False)
    assert sum(calls) == 4  # only the missing step is rendered
    assert torch.equal(longer.w[:8], first.w) and torch.equal(longer.features[:8], first.features)
    sampler = LatentSampler(5, 4, G.style_dim)
    third = [sampler() for _ in range(3)][2]
    torch.testing.assert_close(longer.w[8:], latents_to_w(G, third))
    calls.clear()
    build_bank(path, {"k": 2}, G, clip_model, steps=1, batch=4, seed=5, progress=False)
    assert sum(calls) == 4  # other fields: not the same bank


def test_bank_key_covers_what_the_pairs_depend_on(tiny, tmp_path):
    base = bank_fields(tiny.config, tiny.info, tiny.clip)
    for override in ["stage1.seed=4", "stage1.batch=8", "stage1.truncation=0.7", "clip.antialias=true", "generator.seed=1"]:
        cfg = tiny_config(tmp_path, override)
        info = Tiny(cfg).info if override.startswith("generator") else tiny.info
        assert bank_fields(cfg, info, tiny.clip) != base, override
    # Target labels and lambda do not change the pairs: every domain shares the bank.
    cfg = tiny_config(tmp_path, "prompt.target_class=werewolf", "stage1.lambda_domain=10")
    assert bank_fields(cfg, tiny.info, tiny.clip) == base


def train(tiny, run_dir, *overrides, resume=False, bank=True):
    cfg = tiny_config(run_dir.parent, f"run_dir={run_dir}", f"stage1.images={'bank' if bank else 'fresh'}", *overrides)
    t = Tiny(cfg)
    return stage1.train_mapper(cfg, t.backend, t.clip, run_dir, "cpu", resume=resume, progress=False)


def test_checkpoint_is_plain_data_and_rebuilds_the_mapper(tiny, tmp_path):
    path = train(tiny, tmp_path / "run")
    ckpt = torch.load(path, weights_only=True)
    assert {"format", "config", "step", "prompt", "mapper", "optimizer", "rng"} <= set(ckpt)
    assert ckpt["step"] == 6 and ckpt["prompt"]["n_ctx"] == 4
    model, _ = stage1.load_prompt_model(path)
    w = torch.randn(3, 16)
    fresh = build_prompt_model("adaptive", 16, 4, tiny.clip.token_dim, tiny.config.mapper, seed=3)
    assert not torch.allclose(model(w), fresh(w))  # trained, and the trained weights came back
    lines = (tmp_path / "run" / "stats_stage1.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"contrastive"' in lines[0]


@pytest.mark.parametrize("bank", [True, False], ids=["bank", "fresh"])
def test_resume_reaches_the_uninterrupted_weights(tiny, tmp_path, bank):
    straight = torch.load(train(tiny, tmp_path / "a", bank=bank), weights_only=True)
    train(tiny, tmp_path / "b", "stage1.iterations=3", bank=bank)
    resumed = torch.load(train(tiny, tmp_path / "b", resume=True, bank=bank), weights_only=True)
    assert resumed["step"] == straight["step"] == 6
    for k, v in straight["mapper"].items():
        assert torch.equal(v, resumed["mapper"][k]), k


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real = stage1.stage1_losses
    state = {"step": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        state["step"] += 1
        if state["step"] == 5:
            terms["domain"] = terms["domain"] * float("nan")
        return terms

    monkeypatch.setattr(stage1, "stage1_losses", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 4.*domain=nan.*mapper.pt"):
        train(tiny, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "mapper.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["mapper"].values())


def test_learned_fixed_trains_one_shared_prompt_set(tiny, tmp_path):
    path = train(tiny, tmp_path / "run", "prompt.scheme=learned_fixed")
    model, ckpt = stage1.load_prompt_model(path)
    assert ckpt["prompt"]["scheme"] == "learned_fixed"
    out = model(torch.randn(3, 16))
    assert torch.equal(out[0], out[1])
    init = stage1.ctx_init_embedding(tiny.clip, "a photo of a", 4)
    assert not torch.allclose(out[0], init)  # trained away from the ctx_init embeddings


def test_schemes_without_prompts_have_no_stage1(tiny, tmp_path):
    with pytest.raises(ValueError, match="learns no prompts"):
        train(tiny, tmp_path / "run", "prompt.scheme=manual", bank=False)


def test_bank_and_fresh_images_see_the_same_pairs(tiny, tmp_path):
    # The mapper sees identical latents in both modes; only rendering noise differs.
    cfg = tiny.config
    bank = build_stage1_bank(cfg, tiny.derived.cache_dir, tiny.generator, tiny.info, tiny.clip, progress=False)
    assert isinstance(bank, SourceBank) and len(bank) == cfg.stage1.iterations * cfg.stage1.batch
    sampler = LatentSampler(cfg.stage1.seed, cfg.stage1.batch, tiny.generator.style_dim)
    for step in range(cfg.stage1.iterations):
        torch.testing.assert_close(bank.batch(step, cfg.stage1.batch, "cpu")[0], latents_to_w(tiny.generator, sampler()))


def test_official_text_features_add_the_handwritten_template(tiny):
    # f = Norm(E_T(M) + E_T(ctx_init + " {label}.")), e.g. "a photo of a human."
    from ipl.method.prompts import PromptTextEncoder, prompt_features, text_constants

    clip_model = tiny.clip
    encoder = PromptTextEncoder(clip_model, "a photo of a", ["human", "tolkien elf"])
    constants = text_constants(clip_model, "human", "tolkien elf", "a photo of a")
    ctx = torch.randn(3, 4, clip_model.token_dim)
    raw = encoder(ctx)
    package = clip_model.model.encode_text(clip_model.tokenize(["a photo of a human.", "a photo of a tolkien elf."]))
    source, target = prompt_features(encoder, ctx, constants["template"])
    for got, learned, hand in ((source, raw[0], package[0]), (target, raw[1], package[1])):
        expected = learned + hand
        torch.testing.assert_close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    paper_source, _ = prompt_features(encoder, ctx, None)
    torch.testing.assert_close(paper_source, raw[0] / raw[0].norm(dim=-1, keepdim=True))
