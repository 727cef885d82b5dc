"""Compile the C++/CUDA sources in ``csrc/`` with ``torch.utils.cpp_extension``.

Nothing here runs at import time: ``torch.utils.cpp_extension`` is imported,
and the CUDA toolkit looked for, only when an extension is actually built.
"""

import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")

# Architecture compiled for when no GPU is visible (a build-only check): one
# architecture keeps that build short. With a GPU visible, PyTorch compiles for
# the visible devices.
ARCH_WITHOUT_GPU = "8.0"


def _is_toolkit(home):
    """Whether ``home`` holds an nvcc and the CUDA runtime headers."""
    has_nvcc = os.path.isfile(os.path.join(home, "bin", "nvcc"))
    headers = [os.path.join(home, "include", "cuda_runtime.h")]
    headers += glob.glob(os.path.join(home, "targets", "*", "include", "cuda_runtime.h"))
    return has_nvcc and any(os.path.isfile(h) for h in headers)


def _ask_nvcc_for_home(nvcc):
    """The toolkit root that ``nvcc`` reports in a dry run (its ``TOP``), or None.

    ``nvcc -dryrun`` only prints the commands it would run, preceded by the
    variables of its ``nvcc.profile``, ``TOP`` being the toolkit root.
    """
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.cu")
        open(probe, "w").close()
        try:
            result = subprocess.run(
                [nvcc, "-dryrun", "-c", probe, "-o", os.path.join(tmp, "probe.o")],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r"^#\$ TOP=(.+)$", result.stdout + result.stderr, re.MULTILINE)
    return os.path.realpath(match.group(1).strip().strip('"')) if match else None


def find_cuda_home():
    """The CUDA toolkit folder to build with.

    ``CUDA_HOME`` or ``CUDA_PATH`` when set. Otherwise derived from the nvcc
    on ``PATH``: PyTorch takes the folder two levels above ``which nvcc``
    without resolving links, which gives e.g. ``/usr/local`` for a
    ``/usr/local/bin/nvcc`` link and then fails to link ``-lcudart``. We
    resolve the link first, and when nvcc is a wrapper script rather than a
    link, ask nvcc itself where its toolkit is.

    Returns:
        Path of the toolkit folder (holding ``bin/nvcc``).

    Raises:
        RuntimeError: nvcc is not on ``PATH`` (and no variable is set), or its
            toolkit cannot be located.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError(
            "nvcc is not on PATH and neither CUDA_HOME nor CUDA_PATH is set: install the "
            f"CUDA toolkit matching PyTorch's CUDA {torch.version.cuda} or set CUDA_HOME"
        )
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if _is_toolkit(home):
        return home
    reported = _ask_nvcc_for_home(nvcc)
    if reported is not None and _is_toolkit(reported):
        return reported
    raise RuntimeError(
        f"cannot locate the CUDA toolkit of {nvcc} (neither {home} nor the folder nvcc "
        "reports holds bin/nvcc and include/cuda_runtime.h): set CUDA_HOME"
    )


def find_ninja():
    """Path of the ninja that builds the extensions, or None.

    Besides ``PATH``, looks next to the running Python: ``pip install ninja``
    puts it in a virtual environment's ``bin``, which is not on ``PATH`` when
    that environment's Python is run without activating it.
    """
    found = shutil.which("ninja")
    if found is None:
        found = shutil.which("ninja", path=os.path.dirname(sys.executable))
    return found


@contextlib.contextmanager
def build_environment():
    """Give ``torch.utils.cpp_extension`` what it needs for one build, then restore.

    Only variables the caller left unset are set: ``CUDA_HOME`` (see
    :func:`find_cuda_home`) and, when no GPU is visible, ``TORCH_CUDA_ARCH_LIST``
    (:data:`ARCH_WITHOUT_GPU`); ``PATH`` gains ninja's folder when ninja is
    only found next to the running Python (:func:`find_ninja`).
    ``cpp_extension`` reads ``CUDA_HOME`` once, at its first import, so its
    module-level value is overridden for the build too (it may have been
    imported earlier, with the unresolved guess).

    Yields:
        The ``torch.utils.cpp_extension`` module.
    """
    added = {}
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        added["CUDA_HOME"] = find_cuda_home()
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        added["TORCH_CUDA_ARCH_LIST"] = ARCH_WITHOUT_GPU
    ninja = find_ninja()
    if ninja is not None and shutil.which("ninja") is None:
        added["PATH"] = os.pathsep.join([os.path.dirname(ninja), os.environ.get("PATH", "")])
    previous = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    try:
        from torch.utils import cpp_extension

        module_home = cpp_extension.CUDA_HOME
        if "CUDA_HOME" in added:
            cpp_extension.CUDA_HOME = added["CUDA_HOME"]
        try:
            yield cpp_extension
        finally:
            cpp_extension.CUDA_HOME = module_home
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_extension(name, sources, build_directory=None):
    """Compile (or load from PyTorch's extension cache) one extension.

    Args:
        name: Module name of the extension, e.g. ``"ipl_upfirdn2d"``.
        sources: File names inside ``csrc/``.
        build_directory: Where to build; ``None`` uses PyTorch's cache
            (``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``), which
            is reused as long as the sources do not change.

    Returns:
        The loaded Python module.
    """
    paths = [os.path.join(CSRC, source) for source in sources]
    with build_environment() as cpp_extension:
        return cpp_extension.load(
            name=name,
            sources=paths,
            extra_include_paths=[CSRC],
            extra_cflags=["-O2"],
            extra_cuda_cflags=["-O2"],
            build_directory=build_directory,
            verbose=False,
        )
