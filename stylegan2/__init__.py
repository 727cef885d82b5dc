"""StyleGAN2 generator, numerically the reference PyTorch port, CPU first."""

from .model import Generator

__all__ = ["Generator"]

from .checkpoint import CheckpointError, load_generator, save_generator  # noqa: E402

__all__ += ["CheckpointError", "load_generator", "save_generator"]
