"""Config: layering, validation with dotted paths, derived values, the shipped configs."""

from pathlib import Path

import pytest
import yaml

from ipl import config as config_lib
from ipl.config import ConfigError, load_config, resolve

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TABLE1 = [
    ("ffhq_disney", "ffhq", "photo", "disney"),
    ("ffhq_anime", "ffhq", "photo", "anime painting"),
    ("ffhq_wall_painting", "ffhq", "photo", "wall painting"),
    ("ffhq_ukiyoe", "ffhq", "photo", "ukiyo-e"),
    ("ffhq_pixar", "ffhq", "human", "pixar character"),
    ("ffhq_elf", "ffhq", "human", "tolkien elf"),
    ("ffhq_werewolf", "ffhq", "human", "werewolf"),
    ("afhqdog_cartoon", "afhqdog", "photo", "cartoon"),
    ("afhqdog_pointillism", "afhqdog", "photo", "pointillism"),
    ("afhqdog_cubism", "afhqdog", "photo", "cubism"),
]


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_authors_settings():
    c = config_lib.Config()
    assert (c.stage1.iterations, c.stage1.batch, c.stage1.lr, c.stage1.seed) == (300, 32, 0.05, 3)
    assert (c.stage2.iterations, c.stage2.batch, c.stage2.lr, c.stage2.seed, c.stage2.ema_decay) == (300, 2, 0.002, 2, 0.99)
    assert c.stage1.contrastive_loss == c.stage1.domain_loss == "official" and c.stage1.lambda_src == 0
    assert c.stage1.handwritten == "template" and c.stage2.handwritten == "ctx_init"
    assert c.clip.model == "ViT-B/32" and c.clip.antialias is False
    assert (c.stage2.auto_layer_batch, c.stage2.auto_layer_iters, c.stage2.auto_layer_lr) == (8, 1, 0.01)
    assert c.stage2.layer_selection_every == 1 and c.stage2.layer_mapping == "official"
    assert c.mapper == config_lib.MapperConfig(n_hidden=3, hidden_dim=512, lr_mul=0.01)


@pytest.mark.parametrize("size,k", [(1024, 12), (512, 10), (256, 9), (16, 4)])
def test_derived_layer_count_and_optimiser(size, k):
    d = resolve(config_lib.Config(), size)
    assert d.auto_layer_k == k == int(2 * (2 * {1024: 10, 512: 9, 256: 8, 16: 4}[size] - 2) / 3)
    assert d.n_ctx == 4 and d.n_latent == 2 * {1024: 10, 512: 9, 256: 8, 16: 4}[size] - 2
    assert d.stage2_lr == pytest.approx(0.0016)
    assert d.stage2_betas == (0.0, pytest.approx(0.99**0.8))


def test_layering_defaults_file_overrides(tmp_path):
    path = write(tmp_path, {"stage1": {"lr": 0.1, "batch": 8}, "prompt": {"target_class": "werewolf"}})
    c = load_config(path, ["stage1.lr=0.2", "prompt.source_class=human being", "stage2.chunk=1"])
    assert (c.stage1.lr, c.stage1.batch, c.stage2.chunk) == (0.2, 8, 1)
    assert (c.prompt.source_class, c.prompt.target_class) == ("human being", "werewolf")
    assert c.name == "c" and c.stage1.iterations == 300


@pytest.mark.parametrize(
    "data,message",
    [
        ({"stage1": {"lambda_domian": 1}}, r"unknown config key 'stage1.lambda_domian'; did you mean 'stage1.lambda_domain'"),
        ({"stag1": {"lr": 1}}, r"unknown config key 'stag1'; did you mean 'stage1'"),
        ({"stage1": {"batch": 3.5}}, r"stage1.batch: expected an integer"),
        ({"stage1": {"batch": True}}, r"stage1.batch: expected an integer"),
        ({"clip": {"antialias": "yes"}}, r"clip.antialias: expected true/false"),
        ({"prompt": {"scheme": "nada"}}, r"prompt.scheme: 'nada' is not one of 'adaptive', 'manual'"),
        ({"stage2": 3}, r"stage2: expected a mapping"),
    ],
)
def test_bad_config_names_the_dotted_path(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, data))


def test_bad_override_is_reported():
    with pytest.raises(ConfigError, match="did you mean 'stage2.ema_decay'"):
        load_config(None, ["stage2.ema_decy=0.9"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["stage2.ema_decay"])
    with pytest.raises(ConfigError, match="auto_layer_k: must be between 1 and 18"):
        resolve(load_config(None, ["stage2.auto_layer_k=19"]), 1024)


def test_ints_are_accepted_for_floats_and_round_trip(tmp_path):
    c = load_config(None, ["stage1.lambda_domain=10"])
    assert c.stage1.lambda_domain == 10.0 and isinstance(c.stage1.lambda_domain, float)
    path = tmp_path / "saved.yaml"
    config_lib.save_config(c, path)
    assert load_config(path) == c


@pytest.mark.parametrize("name,generator,source,target", TABLE1)
def test_table1_configs(name, generator, source, target):
    c = load_config(CONFIGS / f"{name}.yaml")
    assert (c.name, c.generator.checkpoint, c.prompt.source_class, c.prompt.target_class) == (name, generator, source, target)
    assert c.prompt.ctx_init == "a photo of a" and c.prompt.scheme == "adaptive"
    assert c.stage1 == config_lib.Stage1Config(lambda_domain=c.stage1.lambda_domain)
    assert c.stage1.lambda_domain in (1.0, 10.0)


def test_tiny_config_needs_no_downloads():
    c = load_config(CONFIGS / "tiny.yaml")
    assert c.generator.checkpoint == "random" and c.clip.model == "tiny" and c.device == "cpu"


def test_every_field_has_a_range_rule():
    # A new field without a rule would be accepted with any value.
    keys = {key for key, _ in config_lib._fields(config_lib.Config())}
    assert keys == set(config_lib._RULES)


@pytest.mark.parametrize(
    "override,message",
    [
        ("stage1.batch=0", r"stage1.batch: 0 must be >= 2"),
        ("stage2.batch=0", r"stage2.batch: 0 must be >= 1"),
        ("stage1.iterations=-5", r"stage1.iterations: -5 must be >= 1"),
        ("generator.render_chunk=-1", r"generator.render_chunk: -1 must be >= 1"),
        ("prompt.target_class=", r"prompt.target_class: '' must not be empty"),
        ("stage2.ema_decay=1.5", r"stage2.ema_decay: 1.5 must be in \(0, 1\]"),
        ("stage1.lambda_domain=-1", r"stage1.lambda_domain: -1.0 must be a finite number >= 0"),
        ("stage1.lr=-0.1", r"stage1.lr: -0.1 must be a finite number > 0"),
        ("stage1.lr=.inf", r"stage1.lr: inf must be a finite number > 0"),
        ("generator.size=100", r"generator.size: 100 must be a power of two"),
        ("prompt.ctx_init=a photo of a zxqvbn", r"'zxqvbn' is 5 tokens"),
        ("prompt.source_class=Disney", r"prompt.target_class: 'disney' is the source label too"),
        ("diffusionclip.n_train_step=1", r"diffusionclip.n_train_step: 1 must be 0 .* or >= 2"),
    ],
)
def test_values_out_of_range_name_the_key_the_value_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_number_strings_are_numbers():
    # YAML 1.1 reads 1e-5 as the string '1e-5'.
    path_value = yaml.safe_load("lr: 1e-5")["lr"]
    assert path_value == "1e-5"
    c = load_config(None, ["stage1.lr=1e-5", "stage1.lambda_domain=1e30"])
    assert c.stage1.lr == 1e-5 and c.stage1.lambda_domain == 1e30
    with pytest.raises(ConfigError, match="stage1.lr: expected a number, got 'fast'"):
        load_config(None, ["stage1.lr=fast"])


def test_several_config_files_layer_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"stage1": {"lr": 0.1, "batch": 8}, "prompt": {"target_class": "werewolf"}}))
    b.write_text(yaml.safe_dump({"stage1": {"lr": 0.2}}))
    c = load_config([a, b], ["stage1.batch=4"])
    assert (c.stage1.lr, c.stage1.batch, c.prompt.target_class, c.name) == (0.2, 4, "werewolf", "b")
    assert load_config([b, a]).stage1.lr == 0.1


def test_yaml_syntax_errors_name_the_line(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("stage1:\n\tlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"tabs.yaml: not valid YAML at line 2, column 1: .*tab"):
        load_config(path)


def test_keys_of_the_other_generator_kind_are_refused():
    with pytest.raises(ConfigError, match="stage2.lr is set, but a generator.kind=diffae run never reads it; set diffusionclip.lr"):
        load_config(None, ["generator.kind=diffae", "generator.checkpoint=random", "stage2.lr=0.1"])
    with pytest.raises(ConfigError, match="diffusionclip is set, but a generator.kind=stylegan2 run"):
        load_config(None, ["diffusionclip.t_0=500"])
    with pytest.raises(ConfigError, match="'ffhq' is a StyleGAN2 model"):
        load_config(None, ["generator.kind=diffae"])
    # A resolved config written by a run holds every section at its default: it loads.
    saved = config_lib.to_dict(load_config(None, ["stage1.lr=0.1"]))
    assert config_lib.from_dict(saved).stage1.lr == 0.1


FIG5_DIFFUSION = [
    ("diffae_wall_painting", "diffae", "ffhq256_autoenc", "adaptive", "photo", "wall painting"),
    ("diffae_elf", "diffae", "ffhq256_autoenc", "adaptive", "human", "tolkien elf"),
    ("ddpm_wall_painting", "ddpm", "celeba_hq", "manual", "photo", "wall painting"),
    ("ddpm_elf", "ddpm", "celeba_hq", "manual", "human", "tolkien elf"),
]


@pytest.mark.parametrize("name,kind,checkpoint,scheme,source,target", FIG5_DIFFUSION)
def test_fig5_diffusion_configs_follow_diffusionclips_readme_recipe_for_faces(name, kind, checkpoint, scheme, source, target):
    c = load_config(CONFIGS / f"{name}.yaml", ["data.images=/faces"])
    assert (c.generator.kind, c.generator.checkpoint, c.prompt.scheme) == (kind, checkpoint, scheme)
    assert (c.prompt.source_class, c.prompt.target_class) == (source, target)
    # --n_iter 5 --t_0 500 --n_inv_step 40 --n_train_step 6 --n_test_step 40
    # --lr_clip_finetune 8e-6 --id_loss_w 0 --l1_loss_w 1, 50 training images.
    dc = c.diffusionclip
    assert (dc.epochs, dc.t_0, dc.n_inv_step, dc.n_train_step, dc.n_test_step, dc.eta) == (5, 500, 40, 6, 40, 0.0)
    assert (dc.lr, dc.id_loss_w, dc.l1_loss_w, c.data.n_train) == (8e-6, 0.0, 1.0, 50)
    # main.py's defaults elsewhere, and a deterministic chain.
    assert (dc.lr_gamma, dc.batch, dc.clip_loss_w, dc.dropout, c.data.n_images, c.data.n_test) == (1.3, 1, 3.0, False, 100, 10)
    assert c.stage1 == config_lib.Stage1Config() and c.clip.model == "ViT-B/32"
    # main.py's defaults stay reachable by name.
    main = load_config([CONFIGS / f"{name}.yaml", CONFIGS / "diffusionclip_main_defaults.yaml"], ["data.images=/faces"])
    assert main.diffusionclip == config_lib.DiffusionCLIPConfig()
    assert (main.diffusionclip.lr, main.diffusionclip.epochs, main.diffusionclip.t_0, main.diffusionclip.l1_loss_w) == (2e-6, 1, 400, 0.0)


def test_tiny_ddpm_config_needs_no_downloads():
    c = load_config(CONFIGS / "tiny_ddpm.yaml")
    assert (c.generator.kind, c.generator.checkpoint, c.ddpm.arch, c.clip.model, c.device) == ("ddpm", "random", "tiny", "tiny", "cpu")


def test_tiny_diffae_config_needs_no_downloads():
    c = load_config(CONFIGS / "tiny_diffae.yaml")
    assert (c.generator.kind, c.generator.checkpoint, c.diffae.arch, c.clip.model, c.device) == ("diffae", "random", "tiny", "tiny", "cpu")
    assert c.data.images == "assets/demo_images"
