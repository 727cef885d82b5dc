"""StyleGAN2 as the stages see it: w codes, the source-feature bank, layer selection and EMA."""

import copy

import torch

from ...config import resolve
from ...method.losses import direction_loss
from ...runtime import LatentSampler, ema_update
from ...sampling import render, truncation_centre, z_from_seeds
from ..base import Batch
from .bank import build_stage1_bank, latents_to_w, render_features
from .selection import select_layers, set_trainable
from .source import build_source_generator


class BankPairs:
    """Stage-1 pairs from the source-feature bank, the step-th block each step."""

    def __init__(self, bank, batch):
        self.bank, self.size = bank, batch

    def batch(self, step, device):
        return self.bank.batch(step, self.size, device)

    def state(self):
        return {}

    def load_state(self, state):
        pass


class FreshPairs:
    """Stage-1 pairs rendered at every step, as the authors' code does.

    The latents are the bank's seeded stream; the rendering noise comes from
    the global generator, which the stage seeds and checkpoints.
    """

    def __init__(self, generator, clip_model, config, truncation_latent):
        c1 = config.stage1
        self.generator, self.clip = generator, clip_model
        self.sampler = LatentSampler(c1.seed, c1.batch, generator.style_dim)
        self.truncation, self.truncation_latent = c1.truncation, truncation_latent
        self.chunk, self.antialias = config.generator.render_chunk, config.clip.antialias

    def batch(self, step, device):
        w = latents_to_w(self.generator, self.sampler().to(device), self.truncation, self.truncation_latent)
        return w, render_features(self.generator, self.clip, w, self.chunk, self.antialias)

    def state(self):
        return {"latents": self.sampler.generator.get_state()}

    def load_state(self, state):
        if "latents" in state:
            self.sampler.generator.set_state(state["latents"])


class StyleGAN2Backend:
    """A pretrained (or seeded random) StyleGAN2 and what the stages need from it.

    Args:
        config: The run's :class:`ipl.config.Config` (``generator`` is used).
        device: Where the generators run.
    """

    kind = "stylegan2"

    def __init__(self, config, device):
        self.device = torch.device(device)
        self.generator, self.info = build_source_generator(config.generator, self.device)
        self.code_dim = self.generator.style_dim
        self.derived = resolve(config, self.generator.size)
        # The checkpoint's latent_avg when it has one (as generate.py uses),
        # else the mean W of 4096 seeded codes.
        centre, _ = truncation_centre(self.info, generator=self.generator)
        self.truncation_latent = centre.to(self.device)

    def describe(self):
        d = self.derived
        return (
            f"n_latent={d.n_latent}, auto_layer_k={d.auto_layer_k}, "
            f"stage2 lr={d.stage2_lr:.6g}, stage2 betas=({d.stage2_betas[0]:.6g}, {d.stage2_betas[1]:.6g})"
        )

    def stage1_pairs(self, config, clip_model, cache_dir, progress=True):
        if config.stage1.images == "bank":
            bank = build_stage1_bank(config, cache_dir, self.generator, self.info, clip_model, self.truncation_latent, progress=progress)
            return BankPairs(bank, config.stage1.batch)
        return FreshPairs(self.generator, clip_model, config, self.truncation_latent)

    def adaptation(self, config, clip_model, constants):
        return StyleGAN2Adaptation(self, config, clip_model, constants)

    @torch.no_grad()
    def source_features(self, config, clip_model, n):
        """NADA's img2img samples: G_s images of seeds 0..n-1, truncation 1, each with random noise drawn from its seed."""
        features = []
        for seed in range(n):  # one at a time: an image (and its noise) depends on its seed only
            w = self.generator.style(z_from_seeds([seed], self.generator.style_dim).to(self.device))
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                image = self.generator([w], input_is_latent=True, randomize_noise=True)[0]
            features.append(clip_model.encode_images(image, antialias=config.clip.antialias))
        return torch.cat(features)


class StyleGAN2Adaptation:
    """Stage 2 on StyleGAN2: G_s frozen, G_t trained on the selected layers, G_t's EMA saved.

    Each step draws z from a seeded stream, trains the layers NADA's adaptive
    selection picks (on a second seeded stream of latents), and takes one
    Adam step over every candidate layer; unchosen candidates hold zero
    gradients, which is what the authors' PyTorch did.
    """

    checkpoint_key = "g"
    adapted_file = "generator.pt"

    def __init__(self, backend, config, clip_model, constants):
        c2 = self.settings = config.stage2
        self.config, self.clip = config, clip_model
        self.derived = resolve(config, backend.generator.size)
        self.device = backend.device
        self.truncation_latent = backend.truncation_latent
        self.latent_avg = backend.info.get("latent_avg")
        self.meta = {"source_class": config.prompt.source_class, "target_class": config.prompt.target_class}
        self.iterations = c2.iterations
        self.chunk = c2.chunk  # the losses are means over images: chunks change memory, not results

        # Generators: frozen source, trainable copy, EMA copy.
        self.source = backend.generator.eval().requires_grad_(False)
        self.trainable = copy.deepcopy(self.source).train()
        self.ema = copy.deepcopy(self.source).eval()
        self.candidates = [p for _, layer in self.trainable.adaptable_layers() for p in layer.parameters()]
        self.label_feature = constants["target_label"]

        # Adam over the candidates. Every candidate holds a (zero) gradient from
        # the start: with the old zero_grad semantics of the authors' PyTorch,
        # layers not chosen in a step still took an Adam step with a zero
        # gradient (no move with beta1 = 0, but their second moments decay).
        self.optimizer = torch.optim.Adam(self.candidates, lr=self.derived.stage2_lr, betas=self.derived.stage2_betas)
        for p in self.candidates:
            p.grad = torch.zeros_like(p)

        style_dim = self.source.style_dim
        self.sampler = LatentSampler(c2.seed, c2.batch, style_dim)
        self.selection_sampler = LatentSampler(c2.seed + 1, c2.auto_layer_batch, style_dim)
        self.chosen = []

    def batch(self, step):
        with torch.no_grad():
            return Batch(self.source.style(self.sampler().to(self.device)))

    def select_trainable(self, step):
        c2 = self.settings
        if step % c2.layer_selection_every == 0 or not self.chosen:
            w = self.source.style(self.selection_sampler().to(self.device))
            self.chosen = select_layers(
                self.trainable,
                self.clip,
                w,
                self.label_feature,
                self.derived.auto_layer_k,
                c2.layer_mapping,
                c2.auto_layer_iters,
                c2.auto_layer_lr,
                c2.chunk,
            )
        set_trainable(self.trainable, self.chosen)
        return self.chosen

    @torch.no_grad()
    def source_images(self, part):
        return self.source([part.codes], input_is_latent=True)[0]

    def trainable_images(self, part):
        yield self.trainable([part.codes], input_is_latent=True)[0]

    def losses(self, source_features, target_features, text_direction, source_images, target_images):
        return {"total": direction_loss(source_features, target_features, text_direction)}

    def after_backward(self):
        pass

    def update(self, step):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        ema_update(self.ema, self.trainable, self.settings.ema_decay)

    def parameters(self):
        return self.candidates

    def state_dict(self):
        return {
            "generator": self.source.config,
            "g_ema": self.ema.state_dict(),
            "latent_avg": self.latent_avg,
            "g": self.trainable.state_dict(),
            "g_optim": self.optimizer.state_dict(),
            "chosen_layers": self.chosen,
            "rng": {"latents": self.sampler.generator.get_state(), "selection": self.selection_sampler.generator.get_state()},
            "meta": self.meta,
        }

    def load_state_dict(self, state):
        self.trainable.load_state_dict(state["g"])
        self.ema.load_state_dict(state["g_ema"])
        self.optimizer.load_state_dict(state["g_optim"])
        self.sampler.generator.set_state(state["rng"]["latents"])
        self.selection_sampler.generator.set_state(state["rng"]["selection"])
        self.chosen = list(state["chosen_layers"])

    def sample_rows(self):
        """Source and adapted images of the fixed sample seeds (truncation, fixed noise)."""
        c2 = self.settings
        z = z_from_seeds(range(c2.sample_seed, c2.sample_seed + c2.n_sample), self.source.style_dim)
        kw = dict(truncation=c2.sample_truncation, truncation_latent=self.truncation_latent, chunk=self.config.generator.render_chunk)
        return [render(self.source, z, **kw), render(self.ema, z, **kw)]

    def save_adapted(self, path, step):
        from stylegan2 import save_generator

        from ...config import to_dict

        n = self.settings.iterations
        save_generator(path, self.ema, latent_avg=self.latent_avg, meta={**self.meta, "step": n}, config=to_dict(self.config), step=n)
