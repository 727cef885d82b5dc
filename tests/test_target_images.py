"""A target given by images: NADA's image direction, the word IPL learns from them, where both are wired."""

import pytest
import torch
from helpers import Tiny, synthetic_photos, tiny_config, tiny_ddpm_config, tiny_diffae_config
from PIL import Image

import ipl.backends.stylegan2.backend as sg2_backend
import ipl.stages.target as target_lib
from ipl.build import build_clip
from ipl.clip import IMAGENET_TEMPLATES, clip
from ipl.config import ConfigError
from ipl.images import UnreadableImageError, image_tensor
from ipl.method.prompts import Label, PromptTextEncoder, label_features, text_constants
from ipl.method.word import initial_word, learn_word
from ipl.pipeline import Session, check_run_inputs
from ipl.runtime import CheckpointError
from ipl.stages.stage1 import load_prompt_model, train_mapper
from ipl.stages.stage2 import train_generator


def write_style_images(folder, n=4, seed=5):
    """``n`` pictures of different sizes, PNG and JPEG, as a user's folder would hold."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = synthetic_photos(1, size=40 + 8 * i, seed=seed + i)[0]
        Image.fromarray(photo).save(folder / (f"style{i}.png" if i % 2 else f"style{i}.jpg"))
    return folder


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def package_image_features(clip_model, files):
    """The clip package's own preprocessing (PIL, as NADA's compute_img2img_direction) and image encoder."""
    transform = clip.clip._transform(clip_model.input_resolution)
    with torch.no_grad():
        return clip_model.model.encode_image(torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))


def token_rows(clip_model, text):
    """The token embeddings of ``text``'s tokens (between [SOS] and [EOS])."""
    tokens = clip_model.tokenize([text])[0]
    with torch.no_grad():
        return clip_model.model.token_embedding(tokens[1 : int(tokens.argmax())]).clone()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Tiny(tiny_config(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    return write_style_images(tmp_path_factory.mktemp("style") / "drawings")


# -- the label abstraction ------------------------------------------------------


def test_a_word_of_the_labels_own_embeddings_gives_the_labels_features(tiny):
    # A learned word stands where the label's tokens stood: given the label's own
    # token embeddings it must reproduce every text feature of the text label.
    clip_model = tiny.clip
    text = "tolkien elf"
    as_word = Label("", token_rows(clip_model, text))
    appended = Label("tolkien", token_rows(clip_model, "elf"))
    for label in (as_word, appended):
        for templates in (IMAGENET_TEMPLATES, ["a photo of a {}."], ["{}"]):
            torch.testing.assert_close(label_features(clip_model, templates, label), clip_model.encode_text([t.format(text) for t in templates]))
        ours, theirs = text_constants(clip_model, "human", label, "a photo of a"), text_constants(clip_model, "human", text, "a photo of a")
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key], value, msg=key)
        ctx = torch.randn(3, 4, clip_model.token_dim)
        torch.testing.assert_close(
            PromptTextEncoder(clip_model, "a photo of a", ["human", label])(ctx), PromptTextEncoder(clip_model, "a photo of a", ["human", text])(ctx)
        )


def test_the_initial_word_is_the_text_tokens_or_their_mean(tiny):
    rows = token_rows(tiny.clip, "tolkien elf")
    assert rows.shape[0] == 2
    torch.testing.assert_close(initial_word(tiny.clip, "tolkien elf", 2), rows)
    torch.testing.assert_close(initial_word(tiny.clip, "tolkien elf", 3), rows.mean(0).expand(3, -1))


# -- learning the word ----------------------------------------------------------


def test_learned_word_is_closer_to_the_images_than_its_start_and_every_vocabulary_token(tiny, style):
    clip_model = tiny.clip
    files = sorted(style.iterdir())
    images = package_image_features(clip_model, files)
    target = unit(unit(images).mean(0))  # the images' mean feature
    templates = ["a drawing of a {}.", "a photo of the {}."]  # two of the 79, so that every token can be tried
    init = initial_word(clip_model, "drawing", 1)
    word, stats = learn_word(clip_model, images, init, steps=60, lr=0.05, templates=templates)

    # Independently: token ids by hand, one vocabulary entry (or a vector) at the word's slot.
    tokenizer = clip.clip._tokenizer
    start, end = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    embedding = clip_model.model.token_embedding.weight.detach()
    vocabulary = torch.tensor([i for i in range(embedding.shape[0]) if i not in (start, end)])

    def alignment(rows):  # rows (V, k): each one a one-token word -> cos(mean_t Norm(E_T(t(word))), target)
        total = 0
        for template in templates:
            before, after = template.split("{}")
            ids = [start] + tokenizer.encode(before) + [0] + tokenizer.encode(after) + [end]
            slot = len(tokenizer.encode(before)) + 1
            x = embedding[torch.tensor(ids)].expand(rows.shape[0], -1, -1).clone()
            x[:, slot] = rows
            eot = torch.full((rows.shape[0],), len(ids) - 1)
            with torch.no_grad():
                total = total + unit(torch.cat([clip_model.encode_embeddings(part, e) for part, e in zip(x.split(8192), eot.split(8192))]))
        return unit(total / len(templates)) @ target

    learned, start_value = alignment(word).item(), alignment(init).item()
    best_token = alignment(embedding[vocabulary]).max().item()
    assert learned > start_value and learned > best_token
    assert stats["alignment_before"] == pytest.approx(start_value, abs=1e-5)
    assert stats["alignment_after"] == pytest.approx(learned, abs=1e-5)


# -- NADA's image direction -------------------------------------------------------


def test_nadas_image_direction_is_the_one_written_out_here(tmp_path, style):
    config = tiny_config(tmp_path, f"prompt.target_images={style}", "prompt.scheme=manual", "stage2.iterations=1", "stage2.n_sample=1")
    tiny = Tiny(config)
    G = tiny.generator
    # img2img_batch = 16 source samples: seeds 0..15, truncation 1, each image's noise from its seed.
    source = []
    for seed in range(16):
        z = torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        with torch.no_grad():
            source.append(tiny.clip.encode_images(G([G.style(z)], input_is_latent=True, randomize_noise=True)[0]))
    source = torch.cat(source)
    files = sorted(style.iterdir())
    d = unit(unit(package_image_features(tiny.clip, files)).mean(0) - unit(source).mean(0))

    seen = []
    real = sg2_backend.direction_loss

    def spy(source_features, target_features, text_direction):
        seen.append(text_direction.detach().clone())
        return real(source_features, target_features, text_direction)

    labels = []
    real_selection = sg2_backend.select_layers

    def selection_spy(generator, clip_model, w, text_feature, *args, **kwargs):
        labels.append(text_feature.clone())
        return real_selection(generator, clip_model, w, text_feature, *args, **kwargs)

    sg2_backend.direction_loss, saved = spy, sg2_backend.direction_loss
    sg2_backend.select_layers = selection_spy
    try:
        train_generator(config, tiny.backend, tiny.clip, tmp_path / "run", "cpu", progress=False)
    finally:
        sg2_backend.direction_loss, sg2_backend.select_layers = saved, real_selection
    # NADA's layer selection still scores against the text target_class when the target is images.
    torch.testing.assert_close(labels[0], tiny.clip.encode_text(["tolkien elf"])[0])
    assert seen and all(x.shape == d.shape for x in seen)
    for x in seen:  # the loop hands NADA's image direction to the loss, not the text one
        torch.testing.assert_close(x, d, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "run" / target_lib.WORD_FILE).exists()  # NADA learns no word


def test_a_diffusion_run_starts_nadas_direction_at_its_first_training_photos(tmp_path, style, monkeypatch):
    from ipl.backends.diffae.backend import DiffAEBackend

    config = tiny_diffae_config(tmp_path, f"prompt.target_images={style}", "prompt.scheme=manual", "prompt.img2img_batch=4")
    backend = DiffAEBackend(config, "cpu", progress=False)
    clip_model = build_clip(config.clip, "cpu")
    with torch.no_grad():
        photos = clip_model.encode_images(torch.cat([image_tensor(f, backend.model.img_size) for f in backend.files[:4]]))
    files = sorted(style.iterdir())
    d = unit(unit(package_image_features(clip_model, files)).mean(0) - unit(photos).mean(0))
    import ipl.method.directions as directions

    built = []
    real = directions.Directions.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(directions.Directions, "__init__", spy)
    train_generator(config, backend, clip_model, tmp_path / "run", "cpu", progress=False)
    torch.testing.assert_close(built[0].fixed, d, rtol=1e-4, atol=1e-5)


# -- runs ---------------------------------------------------------------------------


SHORT = {
    "stylegan2": (tiny_config, ["stage1.iterations=2", "stage1.checkpoint_every=1", "stage2.iterations=2", "stage2.n_sample=1"]),
    "diffae": (tiny_diffae_config, ["stage1.iterations=2", "data.n_train=2", "data.n_test=1", "diffusionclip.epochs=1", "prompt.img2img_batch=4"]),
    "ddpm": (tiny_ddpm_config, ["stage1.iterations=2", "data.n_train=2", "data.n_test=1", "diffusionclip.epochs=1", "prompt.img2img_batch=4"]),
}


@pytest.mark.parametrize("scheme", ["adaptive", "manual", "learned_fixed", "random"])
@pytest.mark.parametrize("kind", ["stylegan2", "diffae", "ddpm"])
def test_an_image_target_runs_end_to_end_for_every_scheme_and_backend(tmp_path, style, kind, scheme):
    make, short = SHORT[kind]
    config = make(tmp_path, f"prompt.target_images={style}", f"prompt.scheme={scheme}", "prompt.word_steps=3", *short)
    session = Session(config, progress=False)
    out = session.adapt()
    assert out.exists() and (session.run_dir / "stage2.pt").exists()
    word_file = session.run_dir / target_lib.WORD_FILE
    assert word_file.exists() == (scheme != "manual")
    stage2 = torch.load(session.run_dir / "stage2.pt", weights_only=True)
    assert stage2["target"]["images_sha256"] == target_lib.images_sha256(sorted(style.iterdir()))
    if scheme == "manual":
        assert stage2["target"]["word"] is None
        return
    saved = torch.load(word_file, weights_only=True)  # plain data
    assert saved["kind"] == "target_word" and saved["images"] == sorted(p.name for p in style.iterdir())
    assert torch.equal(stage2["target"]["word"], saved["word"])  # Stage 2 ran with the saved word
    assert saved["word"].shape == (1, session.clip.token_dim) and not torch.equal(saved["word"], saved["init"])
    if scheme in ("adaptive", "learned_fixed"):
        _, ckpt = load_prompt_model(session.run_dir / "mapper.pt")
        assert torch.equal(ckpt["prompt"]["target"]["word"], saved["word"])


def test_resume_with_images_equals_the_uninterrupted_run_and_reuses_the_word(tmp_path, style, monkeypatch):
    counted = []
    real = target_lib.learn_word
    monkeypatch.setattr(target_lib, "learn_word", lambda *a, **k: counted.append(1) or real(*a, **k))

    def stage(name, which, *overrides, resume=False):
        cfg = tiny_config(tmp_path, f"run_dir={tmp_path / name}", f"prompt.target_images={style}", "prompt.word_steps=4", *overrides)
        t = Tiny(cfg)
        if which == 1:
            return train_mapper(cfg, t.backend, t.clip, tmp_path / name, "cpu", resume=resume, progress=False)
        model, _ = load_prompt_model(tmp_path / name / "mapper.pt")
        return train_generator(cfg, t.backend, t.clip, tmp_path / name, "cpu", prompt_model=model, resume=resume, progress=False)

    stage("a", 1)
    straight = torch.load(stage("a", 2), weights_only=True)
    assert len(counted) == 1  # learned once; Stage 2 read target_word.pt
    stage("b", 1, "stage1.iterations=3")  # both stages interrupted half way, then resumed
    word = (tmp_path / "b" / target_lib.WORD_FILE).read_bytes()
    stage("b", 1, resume=True)
    stage("b", 2, "stage2.iterations=2")
    resumed = torch.load(stage("b", 2, resume=True), weights_only=True)
    assert len(counted) == 2  # run b learned its word once; its later stages reused it
    assert (tmp_path / "b" / target_lib.WORD_FILE).read_bytes() == word
    records = [torch.load(tmp_path / name / "stage2.pt", weights_only=True)["target"] for name in "ab"]
    assert torch.equal(records[0]["word"], records[1]["word"])
    for k, v in straight["g_ema"].items():
        assert torch.equal(v, resumed["g_ema"][k]), k


# -- bad input -------------------------------------------------------------------------


def test_too_few_or_unreadable_images_are_one_clear_error_before_anything_is_built(tmp_path):
    few = write_style_images(tmp_path / "few", n=2)
    with pytest.raises(ConfigError, match=r"prompt.target_images: .*few holds 2 image\(s\).*at least 3"):
        check_run_inputs(tiny_config(tmp_path, f"prompt.target_images={few}"))
    broken = write_style_images(tmp_path / "broken", n=3)
    (broken / "style9.png").write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match=r"prompt.target_images: .*style9.png: not a readable image"):
        check_run_inputs(tiny_config(tmp_path, f"prompt.target_images={broken}"))
    with pytest.raises(ConfigError, match="prompt.target_images: .*missing is not a folder"):
        check_run_inputs(tiny_config(tmp_path, f"prompt.target_images={tmp_path / 'missing'}"))


def test_a_word_learned_from_other_images_or_settings_is_refused(tmp_path, tiny):
    folder = write_style_images(tmp_path / "style")
    config = tiny_config(tmp_path, f"prompt.target_images={folder}", "prompt.word_steps=2")
    first = target_lib.prepare_target(config, tiny.clip, tmp_path / "run", progress=False)
    again = target_lib.prepare_target(config, tiny.clip, tmp_path / "run", progress=False)
    assert torch.equal(first.label.word, again.label.word)
    other = tiny_config(tmp_path, f"prompt.target_images={folder}", "prompt.word_steps=3")
    with pytest.raises(CheckpointError, match="target_word.pt was learned with other prompt.word_steps; train the run again with --restart"):
        target_lib.prepare_target(other, tiny.clip, tmp_path / "run", progress=False)
    Image.fromarray(synthetic_photos(1, seed=99)[0]).save(folder / "style0.jpg")
    with pytest.raises(CheckpointError, match="learned with other images than .*style now holds"):
        target_lib.prepare_target(config, tiny.clip, tmp_path / "run", progress=False)
    relearned = target_lib.prepare_target(config, tiny.clip, tmp_path / "run", progress=False, relearn=True)  # --restart
    assert not torch.equal(relearned.label.word, first.label.word)
    assert torch.equal(target_lib.read_word(tmp_path / "run" / target_lib.WORD_FILE)["word"], relearned.label.word)


def test_the_images_hash_follows_names_and_contents(tmp_path):
    folder = write_style_images(tmp_path / "s", n=3)
    files = sorted(folder.iterdir())
    digest = target_lib.images_sha256(files)
    files[0].rename(folder / "zzz.jpg")
    assert target_lib.images_sha256(sorted(folder.iterdir())) != digest
    (folder / "zzz.jpg").rename(files[0])
    assert target_lib.images_sha256(sorted(folder.iterdir())) == digest
    files[1].write_bytes(files[1].read_bytes() + b"\0")
    assert target_lib.images_sha256(sorted(folder.iterdir())) != digest


def test_inspect_prompts_prints_the_words_nearest_vocabulary_tokens(tmp_path, tiny, monkeypatch, capsys):
    from helpers import run_script

    folder = write_style_images(tmp_path / "style")
    config = tiny_config(tmp_path, f"prompt.target_images={folder}", "prompt.word_steps=2")
    word = target_lib.prepare_target(config, tiny.clip, tmp_path / "run", progress=False).label.word[0]
    embedding = tiny.clip.model.token_embedding.weight.detach()
    cos = (embedding @ word) / (embedding.norm(dim=-1) * word.norm())
    nearest = clip.clip._tokenizer.decoder[int(cos.argmax())].replace("</w>", "")
    code, out, err = run_script("inspect_prompts.py", ["--word", tmp_path / "run" / target_lib.WORD_FILE, "--topk", "2"], monkeypatch, capsys)
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("S*1: "))
    assert line.startswith(f"S*1: {nearest}({cos.max().item():.2f})")
    assert "learned from 4 images" in out
