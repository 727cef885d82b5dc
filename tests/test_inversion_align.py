"""FFHQ alignment: the crop geometry, invariance to similarity transforms, padding, dlib plumbing."""

import math
import sys
import types

import numpy as np
import pytest
from PIL import Image

from ipl.inversion.align import (
    DetectedFace,
    FaceNotFoundError,
    LandmarkDetector,
    MissingDependencyError,
    align_face,
    align_photo,
    best_face,
    crop_quad,
    import_dlib,
)

EYE_HALF_DISTANCE, MOUTH_DROP, MOUTH_HALF_WIDTH = 40.0, 70.0, 28.0


def canonical_landmarks(cx=300.0, cy=280.0):
    """68 points of an upright face: eyes level, mouth centred below them.

    Only the eyes (36-47) and the mouth corners (48, 54) enter the recipe;
    the other points are placed on a rough chin / nose / lip outline.
    """
    lm = np.zeros((68, 2))
    ring = np.array([[-12, 0], [-6, -4], [6, -4], [12, 0], [6, 4], [-6, 4]], dtype=float)  # mean (0, 0)
    lm[36:42] = ring + [cx - EYE_HALF_DISTANCE, cy]
    lm[42:48] = ring + [cx + EYE_HALF_DISTANCE, cy]
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    lip = np.stack([-np.cos(angles) * MOUTH_HALF_WIDTH, -np.sin(angles) * 8], 1)  # point 0 left corner, 6 right
    lm[48:60] = lip + [cx, cy + MOUTH_DROP]
    lm[60:68] = lip[:8] * 0.7 + [cx, cy + MOUTH_DROP]
    jaw = np.linspace(np.pi, 0, 17)
    lm[0:17] = np.stack([cx + 110 * np.cos(jaw), cy + 40 + 110 * np.sin(jaw)], 1)
    lm[17:27] = np.stack([np.linspace(cx - 70, cx + 70, 10), np.full(10, cy - 30)], 1)
    lm[27:36] = np.stack([np.full(9, cx), np.linspace(cy + 5, cy + 45, 9)], 1)
    return lm


def similarity(angle_deg, scale, shift):
    """(matrix A, offset t) of p -> A p + t: rotation, uniform scale, translation."""
    a = math.radians(angle_deg)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return scale * rotation, np.asarray(shift, dtype=float)


def face_values(x, y, cx=300.0, cy=280.0):
    """A smooth synthetic face at canonical coordinates (x, y): (..., 3) values in [0, 255]."""
    def blob(px, py, sx, sy):
        return np.exp(-(((x - px) / sx) ** 2 + ((y - py) / sy) ** 2) / 2)

    skin = 1 / (1 + np.exp(np.clip((((x - cx) / 115) ** 2 + ((y - cy - 30) / 150) ** 2 - 1) * 12, -50, 50)))
    base = np.stack([110 + 40 * np.sin(x / 70), 90 + 30 * np.cos(y / 55), 130 + 20 * np.sin((x + y) / 90)], -1)
    face = base * (1 - skin[..., None]) + np.array([225, 180, 150]) * skin[..., None]
    eyes = blob(cx - EYE_HALF_DISTANCE, cy, 9, 6) + blob(cx + EYE_HALF_DISTANCE, cy, 9, 6)
    face = face * (1 - 0.8 * eyes[..., None])
    mouth = blob(cx, cy + MOUTH_DROP, 22, 6)
    face = face * (1 - mouth[..., None]) + np.array([190, 40, 50]) * mouth[..., None]
    nose = blob(cx, cy + 35, 6, 14)
    return np.clip(face * (1 - 0.25 * nose[..., None]), 0, 255)


def render(size, transform=None):
    """The synthetic face on a (size x size) canvas, warped by ``transform`` (evaluated exactly, no resampling)."""
    v, u = np.mgrid[0:size, 0:size].astype(float)  # pixel (row v, column u) sits at (u, v)
    points = np.stack([u, v], -1)
    if transform is not None:
        matrix, offset = transform
        points = (points - offset) @ np.linalg.inv(matrix).T  # canonical coordinates of each pixel
    return Image.fromarray(np.uint8(np.rint(face_values(points[..., 0], points[..., 1]))))


def warp_points(points, transform):
    matrix, offset = transform
    return points @ matrix.T + offset


def test_quad_of_a_level_face_is_the_expected_square():
    lm = canonical_landmarks(cx=300, cy=280)
    square = crop_quad(lm)
    # eye_to_eye = (80, 0), eye_to_mouth = (0, 70): half-side = max(2 * 80, 1.8 * 70) = 160 along x,
    # centre = eye midpoint + 0.1 * eye_to_mouth = (300, 287).
    half, c = 160.0, np.array([300.0, 287.0])
    expected = np.array([c + [-half, -half], c + [-half, half], c + [half, half], c + [half, -half]])
    np.testing.assert_allclose(square.quad, expected, atol=1e-9)
    assert square.size == pytest.approx(2 * half)

    # A face with a long chin: the eye-to-mouth term sets the size instead (1.8 * 100 > 2 * 80).
    lm_long = lm.copy()
    lm_long[48:60, 1] += 30
    assert crop_quad(lm_long).size == pytest.approx(2 * 1.8 * 100)


@pytest.mark.parametrize("angle,scale,shift", [(25, 1.0, (40, -10)), (-15, 0.7, (120, 90)), (10, 1.8, (-150, -60))])
def test_crop_square_moves_with_the_face(angle, scale, shift):
    lm = canonical_landmarks()
    t = similarity(angle, scale, shift)
    np.testing.assert_allclose(crop_quad(warp_points(lm, t)).quad, warp_points(crop_quad(lm).quad, t), atol=1e-9)
    assert crop_quad(warp_points(lm, t)).size == pytest.approx(crop_quad(lm).size * scale)


# The third warp enlarges the face enough for the recipe's integer shrink of the photo (factor 5, against 2).
@pytest.mark.parametrize("angle,scale,shift,canvas", [(20, 1.0, (60, -20), 720), (-35, 0.75, (150, 120), 720), (8, 2.2, (-20, -150), 1100)])
def test_a_warped_photo_aligns_to_the_same_crop(angle, scale, shift, canvas):
    lm = canonical_landmarks()
    reference = np.asarray(align_face(render(640), lm, output_size=64, transform_size=256), dtype=float)

    t = similarity(angle, scale, shift)
    photo = render(canvas, t)
    aligned = np.asarray(align_face(photo, warp_points(lm, t), output_size=64, transform_size=256), dtype=float)
    assert aligned.shape == reference.shape == (64, 64, 3)
    difference = np.abs(aligned - reference)
    assert difference.mean() < 1.0 and np.percentile(difference, 99) < 6, (difference.mean(), difference.max())

    # The check has teeth: the photo aligned with the unwarped landmarks is another crop.
    wrong = np.asarray(align_face(photo, lm, output_size=64, transform_size=256), dtype=float)
    assert np.abs(wrong - reference).mean() > 15


def test_a_face_at_the_photo_edge_is_padded_with_its_blurred_reflection():
    lm = canonical_landmarks(cx=120, cy=110)  # the crop square reaches past the top-left corner
    v, u = np.mgrid[0:400, 0:400].astype(float)
    photo = Image.fromarray(np.uint8(np.rint(face_values(u + 180, v + 170))))  # the face moved towards the corner
    padded = np.asarray(align_face(photo, lm, output_size=64, transform_size=256), dtype=float)
    black = np.asarray(align_face(photo, lm, output_size=64, transform_size=256, enable_padding=False), dtype=float)
    corner = (slice(0, 6), slice(0, 6))
    assert black[corner].max() == 0  # outside the photo, without padding
    assert padded[corner].min() > 40  # filled from the photo
    np.testing.assert_allclose(padded[40:, 40:], black[40:, 40:], atol=3)  # inside the photo both agree


def test_landmarks_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        crop_quad(np.zeros((5, 2)))


def test_missing_dlib_says_how_to_install_it_or_skip_alignment(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(MissingDependencyError) as error:
        import_dlib()
    assert "pip install dlib" in str(error.value) and "--aligned" in str(error.value)


@pytest.fixture
def model(tmp_path, monkeypatch):
    """A stand-in landmark model file, registered with its own hash (the real file's is dlib's)."""
    import dataclasses
    import hashlib

    from ipl.metrics.weights import WEIGHTS

    path = tmp_path / "shape_predictor_68_face_landmarks.dat"
    path.write_bytes(b"model")
    entry = dataclasses.replace(WEIGHTS["dlib_landmarks68"], sha256=hashlib.sha256(b"model").hexdigest())
    monkeypatch.setitem(WEIGHTS, "dlib_landmarks68", entry)
    return path


def fake_dlib(faces, scores=None):
    """A stand-in for dlib: a detector reporting ``faces`` (with ``scores``) and a predictor that reads them back."""
    scores = [1.0] * len(faces) if scores is None else scores

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    class Shape:
        def __init__(self, points):
            self._points = points

        def parts(self):
            return [Point(x, y) for x, y in self._points]

    calls = {}

    class Detector:
        def __call__(self, image, upsample):  # the recipe's call: rectangles only
            return list(range(len(faces)))

        def run(self, image, upsample, adjust_threshold):
            calls["detect"] = (image.shape, image.dtype, upsample, adjust_threshold)
            return list(range(len(faces))), list(scores), [0] * len(faces)

    def shape_predictor(path):
        calls["model"] = path
        return lambda image, face: Shape(faces[face])

    return types.SimpleNamespace(get_frontal_face_detector=Detector, shape_predictor=shape_predictor), calls


def test_detector_reads_the_model_file_and_reports_every_face_with_its_score(model, monkeypatch):
    first, last = canonical_landmarks(100, 100).astype(int), canonical_landmarks(300, 280).astype(int)
    module, calls = fake_dlib([first, last], scores=[0.25, 1.5])
    monkeypatch.setitem(sys.modules, "dlib", module)
    detector = LandmarkDetector(model)
    faces = detector.detect(Image.new("RGB", (50, 40)))
    # dlib's run(image, 1, 0) reports the detections of the recipe's detector(image, 1), with scores.
    assert calls["model"] == str(model) and calls["detect"] == ((40, 50, 3), np.uint8, 1, 0.0)
    assert [(f.index, f.score) for f in faces] == [(0, 0.25), (1, 1.5)]
    np.testing.assert_array_equal(faces[0].landmarks, first)
    np.testing.assert_array_equal(faces[1].landmarks, last)

    monkeypatch.setitem(sys.modules, "dlib", fake_dlib([])[0])
    with pytest.raises(FaceNotFoundError, match="no face"):
        LandmarkDetector(model)(Image.new("RGB", (50, 40)))


def test_the_face_dlib_scores_highest_is_used_not_the_last_one(model, monkeypatch):
    # A busy photo: a weak detection before the face and another (a badge) after it.
    poster, face, badge = (canonical_landmarks(cx, cy).astype(int) for cx, cy in ((90, 80), (300, 280), (420, 500)))
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib([poster, face, badge], scores=[0.31, 2.07, 0.12])[0])
    np.testing.assert_array_equal(LandmarkDetector(model)(Image.new("RGB", (50, 40))), face)  # the recipe would take the badge
    faces = [DetectedFace(face, 0.5, 0), DetectedFace(badge, 0.5, 1)]
    assert best_face(faces).index == 1  # ties: the later one, as the recipe's loop leaves it
    assert best_face([DetectedFace(face, 0.2, 0)]).index == 0  # one face: the recipe's face
    with pytest.raises(FaceNotFoundError):
        best_face([])


def test_one_face_photos_align_exactly_as_the_recipe(model, monkeypatch):
    lm = canonical_landmarks()
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib([lm], scores=[0.05])[0])
    photo = render(640)
    aligned = align_photo(photo, LandmarkDetector(model), output_size=64, transform_size=256)
    assert np.array_equal(np.asarray(aligned), np.asarray(align_face(photo, lm, output_size=64, transform_size=256)))
