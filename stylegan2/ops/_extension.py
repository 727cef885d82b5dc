"""Dispatch between the pure-PyTorch reference ops and the compiled CUDA ops.

Nothing here compiles or touches CUDA at import time.
"""

import os

_IMPLS = (None, "ref", "cuda")


def wants_cuda(x, impl):
    """Whether a call with tensor ``x`` and ``impl`` should try the CUDA op."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "ref":
        return False
    if impl is None and os.environ.get("IPL_OPS", "").strip().lower() == "ref":
        return False
    if not x.is_cuda:
        if impl == "cuda":
            raise ValueError("impl='cuda' needs a CUDA tensor; use impl='ref' on the CPU")
        return False
    return True


def get_op(name, ref):
    """The compiled op ``name``, or ``None`` when it is not available."""
    return None
