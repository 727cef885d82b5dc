"""Editing real images with a fine-tuned autoencoder: :mod:`ipl.backends.editing`, which serves both diffusion families.

Kept so that ``from ipl.backends.diffae.editing import Editor, load_editor`` goes on working.
"""

from ..editing import Editor, load_editor, run_settings

__all__ = ["Editor", "load_editor", "run_settings"]
