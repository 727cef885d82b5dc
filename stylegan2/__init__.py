"""StyleGAN2 generator, numerically the reference PyTorch port, CPU first."""

from .model import Generator

__all__ = ["Generator"]
