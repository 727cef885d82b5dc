"""Real photos -> W+ codes of a StyleGAN2: FFHQ alignment, e4e / ReStyle encoders, projection.

* :mod:`.align`: the FFHQ alignment recipe (geometry) and dlib landmarks;
* :mod:`.encoders`: :func:`load_encoder` for the e4e and ReStyle-e4e
  checkpoints, ``encoder.invert(images, iterations=K) -> (B, n_styles, 512)``,
  and :func:`check_decoder`;
* :mod:`.projection`: NVIDIA's optimisation-based projection;
* :mod:`.translate`: photos through an adapted generator (used by
  ``scripts/translate.py``).
"""

from .align import (
    CropQuad,
    FaceNotFoundError,
    LandmarkDetector,
    MissingDependencyError,
    align_face,
    crop_quad,
)
from .encoders import (
    DecoderCheck,
    E4EEncoder,
    InversionStep,
    ReStyleEncoder,
    StyleEncoder,
    check_decoder,
    load_encoder,
)
from .images import UnreadableImageError, encoder_input, load_photo
from .projection import LPIPSDistance, Projection, project
from .translate import (
    PhotoTranslator,
    StyleGAN2Translator,
    TranslationSummary,
    build_translator,
    translate_photos,
)

__all__ = [
    "CropQuad",
    "DecoderCheck",
    "E4EEncoder",
    "FaceNotFoundError",
    "InversionStep",
    "LPIPSDistance",
    "LandmarkDetector",
    "MissingDependencyError",
    "PhotoTranslator",
    "Projection",
    "ReStyleEncoder",
    "StyleEncoder",
    "StyleGAN2Translator",
    "TranslationSummary",
    "UnreadableImageError",
    "align_face",
    "build_translator",
    "check_decoder",
    "crop_quad",
    "encoder_input",
    "load_encoder",
    "load_photo",
    "project",
    "translate_photos",
]
