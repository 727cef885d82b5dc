"""The interface between the IPL stages and a generative model.

Stage 1 needs, per step, a batch of ``(code, CLIP image feature)`` pairs:
the code is what the latent mapper reads for an image (StyleGAN2: w;
Diff-AE: the semantic code z_sem) and the feature describes that image.
Stage 2 needs a model to adapt: batches of codes, the frozen source images
and the trainable images of a batch, which parameters train in a step, the
update after a step, checkpoints of its state, sample grids and the adapted
model's file. The stage loops call only these methods and never ask which
backend they hold; everything model-specific (layer selection, EMA, DDIM
chains, optimisers and their schedules) stays behind them.
"""

from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

import torch


@dataclass
class Batch:
    """The images of one Stage-2 step.

    Attributes:
        codes: ``(B, code_dim)`` what the prompt model reads, one row per image.
        data: More per-image tensors the backend needs (first dimension B).
    """

    codes: torch.Tensor
    data: dict = field(default_factory=dict)

    def __len__(self):
        return self.codes.shape[0]

    def select(self, index):
        """The images at ``index`` (a 1-D index tensor), as a Batch."""
        return Batch(self.codes[index], {k: v[index] for k, v in self.data.items()})


class PairSource(Protocol):
    """Stage 1's ``(code, image feature)`` pairs, step by step."""

    def batch(self, step: int, device) -> tuple:
        """``(codes (B, code_dim), image features (B, D))`` of training step ``step``."""

    def state(self) -> dict:
        """Random state to store in a checkpoint (plain tensors)."""

    def load_state(self, state: dict) -> None:
        """Continue from a stored :meth:`state`."""


class Adaptation(Protocol):
    """A generative model being adapted in Stage 2."""

    checkpoint_key: str  # a key every Stage-2 checkpoint of this backend holds
    adapted_file: str  # file name of the adapted model in the run directory
    iterations: int  # training steps of the whole run
    optimizer: torch.optim.Optimizer  # what update() steps; its learning rate is logged
    # Images per backward pass (0 = the whole batch). Only a loss that is a
    # mean over images may be chunked; DiffusionCLIP's is not (0).
    chunk: int

    def batch(self, step: int) -> Batch:
        """The images of step ``step``."""

    def select_trainable(self, step: int) -> Optional[list]:
        """Choose what trains in this step; returns what to log (e.g. layer names) or None."""

    def source_images(self, part: Batch) -> torch.Tensor:
        """``(b, 3, H, W)`` frozen source images of ``part``, in [-1, 1], without gradients."""

    def trainable_images(self, part: Batch) -> Iterator[torch.Tensor]:
        """The trainable model's images of ``part``: one tensor per backward pass."""

    def losses(self, source_features, target_features, text_direction, source_images, target_images) -> dict:
        """Named loss terms of one backward pass, with ``total``."""

    def after_backward(self) -> None:
        """Called after each backward pass (e.g. an optimiser step per pass)."""

    def update(self, step: int) -> None:
        """The end of a training step: optimiser, EMA, schedules."""

    def parameters(self) -> list:
        """The parameters that can train (checked finite before a checkpoint)."""

    def state_dict(self) -> dict:
        """Everything needed to resume, as plain data (random states included)."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from a stored :meth:`state_dict`."""

    def sample_rows(self) -> list:
        """Rows of images ``(N, 3, H, W)`` for a sample grid (source row first)."""

    def save_adapted(self, path, step: int) -> None:
        """Write the adapted model, loadable by the backend's loader."""


class Backend(Protocol):
    """A family of generative models, as the stages see it."""

    kind: str  # the config's generator.kind
    code_dim: int  # width of the codes the prompt model reads

    def describe(self) -> str:
        """One line of derived values for the run's config header."""

    def stage1_pairs(self, config, clip_model, cache_dir, progress=True) -> PairSource:
        """Where Stage 1 draws its pairs from."""

    def adaptation(self, config, clip_model, constants) -> Adaptation:
        """A fresh Stage-2 model to adapt (``constants``: the run's constant text features)."""

    def source_features(self, config, clip_model, n: int) -> torch.Tensor:
        """Un-normalised CLIP features ``(n, D)`` of n source-domain images, the same every call.

        Where NADA's image direction (``prompt.target_images`` with the
        manual scheme) starts: StyleGAN-NADA's ``img2img_batch`` samples.
        """
