"""Download, on a connected machine, the wheels an offline GPU node needs besides PyTorch.

    python benchmarks/fetch_wheels.py                                   # for a node like this machine
    python benchmarks/fetch_wheels.py --python-version 3.12 --platform manylinux_2_28_x86_64
    python benchmarks/fetch_wheels.py --python-version 3.10 --platform manylinux_2_28_x86_64 --set-version scipy=1.15.3
    python benchmarks/fetch_wheels.py --platform manylinux_2_28_aarch64  # e.g. Grace Hopper nodes

Writes ``gpu_check_wheels/`` (``--dest``), about 40 MiB. On the node, from the checkout:

    pip install --no-index --no-deps --target /tmp/ipl-site gpu_check_wheels/*.whl
    PATH=/tmp/ipl-site/bin:$PATH PYTHONPATH=.:/tmp/ipl-site python benchmarks/gpu_check.py

A node is assumed to have PyTorch (2.4 or newer) and the torchvision built
for it, which bring numpy and pillow; everything else the project imports is
here: ``openai-clip``, ``ftfy``, ``lpips`` and what they require that such
an install lacks (each wheel is downloaded alone, ``--no-deps``, so the list
is the whole closure). Versions are the tested ones; those that
requirements.txt pins are checked against it.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> version, and why the node needs it (Requires-Dist of the packages above it).
WHEELS = {
    "openai-clip": ("1.0.1", "CLIP's model code, tokenizer and vocabulary"),
    "ftfy": ("6.3.1", "required by openai-clip"),
    "regex": ("2026.11.19", "required by openai-clip (compiled: per Python version and platform)"),
    "tqdm": ("4.70.1", "required by openai-clip, lpips and the stages"),
    "wcwidth": ("0.9.4", "required by ftfy"),
    "setuptools": ("80.10.2", "openai-clip imports pkg_resources, which setuptools 81 and later lack"),
    "packaging": ("26.4", "pkg_resources.packaging, used by openai-clip"),
    "PyYAML": ("6.0.4", "the configs (compiled)"),
    "lpips": ("0.1.4", "the diversity metric"),
    "scipy": ("1.17.1", "required by lpips, and the SIFID metric (compiled)"),
    "ninja": ("1.13.2", "builds the CUDA ops (the wheel holds the ninja binary)"),
}
# No wheel of openai-clip is published (only its source archive): it is built
# here into a pure-Python wheel, which installs on any node.
BUILT_FROM_SOURCE = {"openai-clip"}
LIMIT_MIB = 64


def pinned_in_requirements():
    """``{normalised name: version}`` of the ``name==version`` lines of requirements.txt."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+).*", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_tags(platform):
    """``platform`` and, for ``manylinux_2_X_ARCH``, the older manylinux tags a node of
    that glibc also runs (pip matches only the tags it is given)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    return [f"manylinux_2_{v}_{arch}" for v in range(glibc, 16, -1)] + [f"manylinux2014_{arch}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="gpu_check_wheels", help="folder of the wheels")
    parser.add_argument("--python-version", help="the node's Python, e.g. 3.10 (default: this one)")
    parser.add_argument("--platform", action="append", help="the node's platform tag, e.g. manylinux_2_28_x86_64 for glibc 2.28 or newer (repeatable; default: this machine's)")
    parser.add_argument("--set-version", action="append", default=[], metavar="NAME=VERSION",
                        help="another version of one wheel, e.g. scipy=1.15.3 for Python 3.10 (repeatable)")
    args = parser.parse_args()
    wheels = dict(WHEELS)
    for item in args.set_version:
        name, _, version = item.partition("=")
        if name not in wheels or not version:
            parser.error(f"--set-version {item!r}: use NAME=VERSION with NAME among {', '.join(wheels)}")
        wheels[name] = (version, wheels[name][1])

    pins = pinned_in_requirements()
    wrong = {n: (v, pins[normalise(n)]) for n, (v, _) in wheels.items() if normalise(n) in pins and pins[normalise(n)] != v}
    if wrong:
        sys.exit(f"versions differ from requirements.txt (given, pinned): {wrong}")

    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = []
    if args.python_version:
        target += ["--python-version", args.python_version]
    for platform in args.platform or []:
        target += [option for tag in platform_tags(platform) for option in ("--platform", tag)]
    pip = [sys.executable, "-m", "pip"]
    binary = [f"{n}=={v}" for n, (v, _) in wheels.items() if n not in BUILT_FROM_SOURCE]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", *target, "--dest", str(dest), *binary], check=True)
    source = [f"{n}=={v}" for n, (v, _) in wheels.items() if n in BUILT_FROM_SOURCE]
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), *source], check=True)

    expected = {(normalise(n), v) for n, (v, _) in wheels.items()}
    wheels = sorted(w for w in dest.glob("*.whl") if (normalise(w.name.split("-")[0]), w.name.split("-")[1]) in expected)
    missing = expected - {(normalise(w.name.split("-")[0]), w.name.split("-")[1]) for w in wheels}
    if missing:
        sys.exit(f"missing wheels: {sorted(missing)}")
    total = sum(w.stat().st_size for w in wheels) / 2**20
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    print(f"{total:8.2f} MiB  in {len(wheels)} wheels, {dest}/")
    if total > LIMIT_MIB:
        sys.exit(f"the wheels take {total:.1f} MiB, more than {LIMIT_MIB} MiB")
    print(f"\non the node, from the checkout:\n  pip install --no-index --no-deps --target /tmp/ipl-site {dest}/*.whl\n"
          "  PATH=/tmp/ipl-site/bin:$PATH PYTHONPATH=.:/tmp/ipl-site python benchmarks/gpu_check.py")


if __name__ == "__main__":
    main()
