"""Dispatch between the pure-PyTorch reference ops and the compiled CUDA ops.

Nothing here compiles, imports ``torch.utils.cpp_extension`` or touches CUDA
at import time. A compiled op goes through three stages, each at most once:

1. build, on the first call with a CUDA tensor (:meth:`LazyOp.resolve`);
2. self-check against the reference on a small random input, forward and
   gradient, the first time it runs on a given device and dtype;
3. if either fails: one :class:`OpFallbackWarning` giving the reason, and the
   reference from then on (the failure is remembered, nothing is retried).
"""

import os
import warnings

import torch

from . import _fused_act_cuda, _upfirdn2d_cuda

_IMPLS = (None, "ref", "cuda")

# Largest accepted difference from the reference, relative to 1 + max |reference|:
# loose enough for rounding (the compiled ops accumulate in float32 for half
# types, the reference may not), tight enough to catch any indexing mistake,
# which errs by the order of the values themselves.
_TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}

# A failed build's message holds the whole compiler log; the warning keeps its
# beginning (the command and first errors) and its end.
_MESSAGE_HEAD, _MESSAGE_TAIL = 1500, 2500


class OpFallbackWarning(UserWarning):
    """A compiled op is not used; the slower pure-PyTorch reference is."""


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


def _describe(error):
    message = f"{type(error).__name__}: {error}".strip()
    if len(message) > _MESSAGE_HEAD + _MESSAGE_TAIL:
        message = f"{message[:_MESSAGE_HEAD]}\n[...]\n{message[-_MESSAGE_TAIL:]}"
    return message


def _outputs_and_grads(fn, args, dy=None, generator=None):
    """``fn(*args)`` and the gradients of ``(fn(*args) * dy).sum()`` w.r.t. the
    arguments that require grad, with names; ``dy`` is drawn from ``generator``
    when not given. Returns ``(names, tensors, dy)``."""
    y = fn(*args)
    if dy is None:
        dy = torch.randn(y.shape, generator=generator).to(y.device, y.dtype)
    wrt = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(y, [args[i] for i in wrt], dy)
    names = ["output"] + [f"gradient w.r.t. argument {i}" for i in wrt]
    return names, [y, *grads], dy


class LazyOp:
    """A compiled op that is built, self-checked and, if need be, given up, once.

    Args:
        name: Name used in warnings.
        build: ``build() -> op``, compiling the extension; ``op`` has the
            signature of the reference. Tests inject fakes here.
        check_inputs: ``check_inputs(device, dtype, generator)`` -> list of
            argument tuples for the self-check; tensors that require grad get
            their gradients compared too.
    """

    def __init__(self, name, build, check_inputs):
        self.name = name
        self._build = build
        self._check_inputs = check_inputs
        self._op = None
        self._checked = set()  # (device, dtype) pairs that passed the self-check
        self.failure = None  # why the reference is used instead, once known

    def resolve(self, ref):
        """The op to call (building it on first use), or ``None`` to use ``ref``.

        Args:
            ref: The reference implementation, with the op's signature; the
                self-check compares against it.

        Returns:
            A callable with the signature of ``ref``, or ``None`` when the op
            failed to build or failed its self-check.
        """
        if self.failure is not None:
            return None
        if self._op is None:
            try:
                self._op = self._build()
            except Exception as error:  # any build failure means: use the reference
                self._give_up(f"building it failed with {_describe(error)}")
                return None
        return lambda *args: self._call(ref, *args)

    def _call(self, ref, x, *args):
        key = (x.device, x.dtype)
        if key not in self._checked:
            problem = self._self_check(ref, x.device, x.dtype)
            if problem is not None:
                self._give_up(problem)
                return ref(x, *args)
            self._checked.add(key)
        return self._op(x, *args)

    def _self_check(self, ref, device, dtype):
        """Compare the op with ``ref`` on small random inputs; the problem found, or None."""
        tolerance = _TOLERANCE.get(dtype)
        if tolerance is None:
            return f"dtype {dtype} is not supported (use one of {sorted(map(str, _TOLERANCE))})"
        generator = torch.Generator().manual_seed(0)
        # The check must hold whatever the caller's context: gradients on, no
        # autocast (it would run the reference in another precision).
        try:
            with torch.inference_mode(False), torch.enable_grad():
                with torch.autocast(device.type, enabled=False):
                    cases = self._check_inputs(device, dtype, generator)
                    for case, args in enumerate(cases):
                        where = f"its self-check on {device} {dtype} (case {case})"
                        problem = self._compare(ref, args, generator, tolerance, where)
                        if problem is not None:
                            return problem
        except Exception as error:  # e.g. no kernel image for this GPU
            return f"its self-check on {device} {dtype} raised {_describe(error)}"
        return None

    def _compare(self, ref, args, generator, tolerance, where):
        names, want, dy = _outputs_and_grads(ref, args, generator=generator)
        _, got, _ = _outputs_and_grads(self._op, args, dy)
        for what, g, w in zip(names, got, want):
            if g.shape != w.shape or g.dtype != w.dtype:
                return (
                    f"{where} gave an {what} of shape {tuple(g.shape)} {g.dtype} "
                    f"instead of {tuple(w.shape)} {w.dtype}"
                )
            error = (g - w).abs().max().item() if w.numel() else 0.0
            bound = tolerance * (1 + (w.abs().max().item() if w.numel() else 0.0))
            if not error <= bound:  # also catches NaN
                return (
                    f"{where} disagrees with the reference: {what} "
                    f"max error {error:.3g} > {bound:.3g}"
                )
        return None

    def _give_up(self, reason):
        self.failure = reason
        self._op = None
        warnings.warn(
            f"stylegan2.ops: not using the compiled {self.name!r} op: {reason}. Falling back "
            "to the pure-PyTorch reference (slower) for the rest of this process.",
            OpFallbackWarning,
            stacklevel=4,
        )


_OPS = {
    "upfirdn2d": LazyOp("upfirdn2d", _upfirdn2d_cuda.build, _upfirdn2d_cuda.check_inputs),
    "fused_bias_act": LazyOp("fused_bias_act", _fused_act_cuda.build, _fused_act_cuda.check_inputs),
}


def get_op(name, ref):
    """The compiled op ``name``, or ``None`` when the reference should be used.

    The first call builds the extension (see :class:`LazyOp`); later calls
    reuse it, or keep returning ``None`` once it has failed.

    Args:
        name: ``"upfirdn2d"`` or ``"fused_bias_act"``.
        ref: The reference implementation, same signature as the op.

    Returns:
        A callable with the signature of ``ref``, or ``None``.
    """
    if name not in _OPS:
        raise ValueError(f"unknown compiled op {name!r}; known ops: {sorted(_OPS)}")
    return _OPS[name].resolve(ref)
