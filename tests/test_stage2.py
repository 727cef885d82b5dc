"""Stage 2: layer selection, directions, what trains, EMA, outputs, resume, divergence."""

import copy

import pytest
import torch
from helpers import Tiny, tiny_config

import ipl.backends.stylegan2.backend as sg2_backend
import ipl.backends.stylegan2.selection as selection
import ipl.stages.stage2 as stage2
from ipl.method.directions import Directions, build_directions
from ipl.method.losses import global_clip_loss, normalize
from ipl.method.mapper import FixedPrompts, build_prompt_model
from ipl.method.prompts import PromptTextEncoder, text_constants
from ipl.runtime import TrainingDiverged
from ipl.sampling import grid, read_png, render, z_from_seeds
from ipl.stages.stage1 import load_prompt_model, train_mapper
from stylegan2 import load_generator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Tiny(tiny_config(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def trained_mapper(tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("mapper")
    cfg = tiny_config(run, f"run_dir={run}", "stage1.images=fresh")
    path = train_mapper(cfg, tiny.backend, tiny.clip, run, "cpu", progress=False)
    return load_prompt_model(path)[0]


def trainable_copy(generator):
    g = copy.deepcopy(generator).train()
    with torch.no_grad():  # make the layers' gradients differ from each other
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return g


# -- layer selection --------------------------------------------------------


def test_official_and_exact_slot_mappings(tiny):
    G = tiny.generator
    official = selection.official_slot_layers(G)
    assert official[:4] == [["conv1"], ["to_rgb1"], ["convs.0"], ["convs.1"]]
    assert len(official) == G.n_latent

    # Which candidate layers really read slot j: give every slot its own code
    # and record which code reaches each layer's modulation.
    wplus = torch.randn(1, G.n_latent, G.style_dim)
    seen = {}
    for name, layer in G.adaptable_layers():
        layer.conv.modulation.register_forward_hook(lambda m, inp, out, name=name: seen.setdefault(name, inp[0]))
    with torch.no_grad():
        G([wplus], input_is_latent=True)
    for hook_owner in G.modules():
        hook_owner._forward_hooks.clear()
    reads = {name: next(j for j in range(G.n_latent) if torch.equal(x, wplus[:, j])) for name, x in seen.items()}
    exact = selection.exact_slot_layers(G)
    for j, names in enumerate(exact):
        assert sorted(names) == sorted(n for n, s in reads.items() if s == j)
    # The official mapping is off by one for every conv: convs.i reads slot i + 1.
    assert reads["convs.0"] == 1 and official[2] == ["convs.0"]


def naive_layer_selection(generator, clip_model, w, text_feature, k, noise, iters=1, lr=0.01):
    """The authors' way: unfreeze everything, SGD on W+, rank |w - w0|."""
    generator.requires_grad_(True)
    w0 = w.unsqueeze(1).repeat(1, generator.n_latent, 1)
    codes = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([codes], lr=lr)
    for _ in range(iters):
        image = generator([codes], input_is_latent=True, noise=noise)[0]
        loss = global_clip_loss(clip_model.encode_images(image), text_feature, clip_model.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights_got_gradients = all(p.grad is not None for _, layer in generator.adaptable_layers() for p in layer.parameters())
    score = (codes.detach() - w0).abs().mean(-1).mean(0)
    slots = torch.topk(score, k).indices.tolist()
    return sorted(n for s in slots for n in selection.official_slot_layers(generator)[s]), weights_got_gradients


@pytest.mark.parametrize("iters", [1, 2])
def test_gradient_only_selection_equals_the_naive_way(tiny, iters):
    torch.manual_seed(0)
    G = trainable_copy(tiny.generator)
    w = G.style(torch.randn(4, G.style_dim)).detach()
    noise = [torch.randn(4, 1, *n.shape[2:]) for n in G.make_noise()]
    text = tiny.clip.encode_text(["tolkien elf"])[0]
    ours = selection.select_layers(G, tiny.clip, w, text, k=4, iters=iters, noise=noise)
    assert all(not p.requires_grad for p in G.parameters())  # no weight gradients were needed
    naive, graded = naive_layer_selection(copy.deepcopy(G), tiny.clip, w, text, 4, noise, iters)
    assert graded and ours == naive and len(ours) == 4
    chunked = selection.select_layers(G, tiny.clip, w, text, k=4, iters=iters, noise=noise, chunk=1)
    assert chunked == ours


# -- directions -------------------------------------------------------------


@pytest.fixture(scope="module")
def constants(tiny):
    return text_constants(tiny.clip, "human", "tolkien elf", "a photo of a")


def directions_for(tiny, constants, model, handwritten="ctx_init"):
    encoder = PromptTextEncoder(tiny.clip, "a photo of a", ["human", "tolkien elf"])
    return Directions("adaptive", tiny.clip, constants, model, encoder, handwritten)


def test_a_mapper_that_ignores_its_input_gives_one_shared_direction(tiny, constants):
    fixed = FixedPrompts(torch.randn(4, tiny.clip.token_dim))
    d = directions_for(tiny, constants, fixed)(torch.randn(5, 16))
    assert d.shape == (5, tiny.clip.embed_dim)
    torch.testing.assert_close(d, d[:1].expand_as(d))


def test_a_trained_mapper_gives_every_latent_its_own_direction(tiny, constants, trained_mapper):
    d = directions_for(tiny, constants, trained_mapper)(tiny.generator.style(torch.randn(5, 16)))
    cos = normalize(d) @ normalize(d).t()
    off_diagonal = cos[~torch.eye(5, dtype=bool)]
    assert (off_diagonal < 1 - 1e-4).all()
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(5))


def test_official_stage2_handwritten_text_is_ctx_init_alone(tiny, constants, trained_mapper):
    # dT = Norm(Norm(E(M_t) + E(h)) - Norm(E(M_s) + E(h))) with h = "a photo of a".
    encoder = PromptTextEncoder(tiny.clip, "a photo of a", ["human", "tolkien elf"])
    w = tiny.generator.style(torch.randn(3, 16))
    raw = encoder(trained_mapper(w))
    h = tiny.clip.encode_text(["a photo of a"])[0]
    expected = normalize(normalize(raw[1] + h) - normalize(raw[0] + h))
    torch.testing.assert_close(directions_for(tiny, constants, trained_mapper)(w), expected)
    none = directions_for(tiny, constants, trained_mapper, "none")(w)
    torch.testing.assert_close(none, normalize(normalize(raw[1]) - normalize(raw[0])))


def test_manual_direction_is_nadas_template_direction(tiny, constants):
    d = Directions("manual", tiny.clip, constants)(torch.randn(3, 16))
    from ipl.clip import IMAGENET_TEMPLATES

    # By hand: one template at a time through the package's encode_text.
    diffs = []
    for template in IMAGENET_TEMPLATES:
        s = tiny.clip.model.encode_text(tiny.clip.tokenize([template.format("human")]))[0]
        t = tiny.clip.model.encode_text(tiny.clip.tokenize([template.format("tolkien elf")]))[0]
        diffs.append(t / t.norm() - s / s.norm())
    expected = torch.stack(diffs).mean(0)
    assert d.shape == (tiny.clip.embed_dim,)  # one direction, shared by every image
    torch.testing.assert_close(d, expected / expected.norm(), rtol=1e-5, atol=1e-6)


# -- training ---------------------------------------------------------------


def run_stage2(tiny, run_dir, *overrides, prompt_model=None, resume=False):
    cfg = tiny_config(run_dir.parent, f"run_dir={run_dir}", *overrides)
    return stage2.train_generator(cfg, tiny.backend, tiny.clip, run_dir, "cpu", prompt_model=prompt_model, resume=resume, progress=False)


def test_only_selected_layers_train_and_the_rest_never_changes(tiny, trained_mapper, tmp_path):
    run_stage2(tiny, tmp_path / "run", "stage2.iterations=1", prompt_model=trained_mapper)
    ckpt = torch.load(tmp_path / "run" / "stage2.pt", weights_only=True)
    source = tiny.generator.state_dict()
    changed = {k for k, v in ckpt["g"].items() if not torch.equal(v, source[k])}
    chosen = ckpt["chosen_layers"]
    assert len(chosen) == 4  # int(2 * n_latent / 3) for 16 px: n_latent = 6
    assert changed and all(any(k.startswith(name + ".") for name in chosen) for k in changed)
    assert all(not k.startswith(("style.", "input.", "to_rgbs.", "noises.")) for k in changed)
    # EMA after one step: decay * source + (1 - decay) * trained.
    for k, v in ckpt["g_ema"].items():
        torch.testing.assert_close(v, 0.99 * source[k] + 0.01 * ckpt["g"][k], rtol=1e-6, atol=1e-7)


def test_unchosen_layers_take_zero_gradient_adam_steps(tiny, trained_mapper, tmp_path):
    # The authors' PyTorch zeroed gradients instead of dropping them, so every
    # candidate took an Adam step each iteration (advancing its step count).
    run_stage2(tiny, tmp_path / "run", "stage2.iterations=2", prompt_model=trained_mapper)
    state = torch.load(tmp_path / "run" / "stage2.pt", weights_only=True)["g_optim"]["state"]
    n_candidates = sum(len(list(layer.parameters())) for _, layer in tiny.generator.adaptable_layers())
    assert len(state) == n_candidates
    assert all(float(s["step"]) == 2 for s in state.values())


def test_saved_generator_reloads_and_reproduces_the_saved_grid(tiny, trained_mapper, tmp_path):
    run = tmp_path / "run"
    out = run_stage2(tiny, run, prompt_model=trained_mapper)
    G, info = load_generator(out)
    assert info["meta"]["target_class"] == "tolkien elf"
    cfg = tiny_config(tmp_path, f"run_dir={run}")
    z = z_from_seeds(range(cfg.stage2.sample_seed, cfg.stage2.sample_seed + cfg.stage2.n_sample), 16)
    kw = dict(truncation=cfg.stage2.sample_truncation, truncation_latent=tiny.truncation_latent)
    ours = grid([render(tiny.generator, z, **kw), render(G, z, **kw)])
    assert (ours == read_png(run / "samples" / "step_000004.png")).all()
    lines = (run / "stats_stage2.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"layers"' in lines[0]


def test_resume_reaches_the_uninterrupted_generator(tiny, trained_mapper, tmp_path):
    a = torch.load(run_stage2(tiny, tmp_path / "a", prompt_model=trained_mapper), weights_only=True)
    run_stage2(tiny, tmp_path / "b", "stage2.iterations=2", prompt_model=trained_mapper)
    b = torch.load(run_stage2(tiny, tmp_path / "b", prompt_model=trained_mapper, resume=True), weights_only=True)
    for k, v in a["g_ema"].items():
        assert torch.equal(v, b["g_ema"][k]), k


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, trained_mapper, tmp_path, monkeypatch):
    real = sg2_backend.direction_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(sg2_backend, "direction_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 4.*stage2.pt"):
        run_stage2(tiny, tmp_path / "run", prompt_model=trained_mapper)
    ckpt = torch.load(tmp_path / "run" / "stage2.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["g"].values())


@pytest.mark.parametrize("scheme", ["manual", "random"])
def test_schemes_without_a_mapper_checkpoint_run(tiny, tmp_path, scheme):
    out = run_stage2(tiny, tmp_path / "run", f"prompt.scheme={scheme}", "stage2.iterations=2")
    G, _ = load_generator(out)
    assert not all(torch.equal(v, tiny.generator.state_dict()[k]) for k, v in G.state_dict().items())


def test_random_scheme_uses_the_untrained_stage1_mapper(tiny):
    cfg = tiny.config
    directions, _ = build_directions(tiny_config_with(cfg, "random"), tiny.clip, tiny.generator.style_dim)
    fresh = build_prompt_model("adaptive", 16, 4, tiny.clip.token_dim, cfg.mapper, seed=cfg.stage1.seed)
    for p, q in zip(directions.prompt_model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def tiny_config_with(cfg, scheme):
    import dataclasses

    return dataclasses.replace(cfg, prompt=dataclasses.replace(cfg.prompt, scheme=scheme))


def test_source_and_trainable_generators_draw_independent_noise(tiny, tmp_path, monkeypatch):
    # At the first step G_t equals G_s; their images differ only through noise.
    seen = []
    real = tiny.clip.encode_images

    def spy(images, antialias=False):
        seen.append(images.detach().clone())
        return real(images, antialias)

    monkeypatch.setattr(tiny.clip, "encode_images", spy)
    run_stage2(tiny, tmp_path / "run", "prompt.scheme=manual", "stage2.iterations=1", "stage2.n_sample=1")
    source_image, trainable_image = seen[-2], seen[-1]  # the training step's two encodings
    assert source_image.shape == trainable_image.shape == (2, 3, 16, 16)
    assert not torch.equal(source_image, trainable_image)
