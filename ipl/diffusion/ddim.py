"""DDIM: one step and the walks of diffae and DiffusionCLIP, as plain functions.

Nothing here knows a network: a walk takes ``eps_fn(x, t) -> eps``, where
``t`` (B,) holds original timesteps 0..T-1, and a list of :class:`Step` built
from a schedule (:mod:`ipl.diffusion.schedule`). Both diffusion backends
(Diff-AE conditioned on z_sem, the plain DDPM) use these.

* diffae's DDIM step (``ddim_sample`` / ``ddim_reverse_sample`` with
  ``clip_denoised=True``, the default of both ``render`` and
  ``encode_stochastic``): ``x0 = sqrt(1/a) x_t - sqrt(1/a - 1) eps``,
  clamped to [-1, 1]; eps is then re-derived from the clamped x0,
  ``eps = (sqrt(1/a) x_t - x0) / sqrt(1/a - 1)``; ``sigma = eta sqrt((1 -
  a') / (1 - a)) sqrt(1 - a / a')``; ``x' = sqrt(a') x0 + sqrt(1 - a' -
  sigma^2) eps + sigma z``. Sampling walks the spaced indices down with
  ``a' = alphas_cumprod[i - 1]`` and ``a' = 1`` after the first one; the
  inversion walks up with ``a' = alphas_cumprod[i + 1]`` and ``a' = 0``
  after the last one, so its result is the last noise prediction itself.
  The two walks are not exact inverses of each other, even for a perfect
  noise predictor: the inversion starts from the image as if it were
  x at timestep 0 and ends at alpha 0, the sampler starts at the last kept
  timestep and ends at alpha 1.
* DiffusionCLIP's walks to and from ``t_0`` over ``seq`` (see
  :func:`~ipl.diffusion.schedule.partial_timesteps`): the inversion (eta 0)
  steps over ``(seq[k-1], seq[k])`` for k = 1..n-1 (n - 1 steps, the image
  taken as x at timestep 0); the generation steps over ``reversed(seq)``
  paired with ``reversed([-1] + seq[:-1])`` (n steps, the last one from
  timestep 0 to alpha 1). Its step does not clamp x0 and uses eps as
  predicted (``clip_x0=False``).
"""

import math
from typing import Callable, Iterator, List, NamedTuple, Sequence

import torch
from torch.utils import checkpoint as grad_checkpoint

from .schedule import Schedule, partial_timesteps

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------
# Steps of each walk: (t, t_next, alpha, alpha_next)


class Step(NamedTuple):
    """One DDIM step: the network sees ``t``; the state moves from ``alpha`` to ``alpha_next``.

    ``t_next`` names the target: an original timestep, ``-1`` for the clean
    image (alpha 1), or ``T`` for the end of diffae's inversion (alpha 0).
    """

    t: int
    t_next: int
    alpha: float
    alpha_next: float


def sampling_steps(schedule: Schedule) -> List[Step]:
    """diffae's ``ddim_sample_loop``: the spaced indices from last to first, ending at alpha 1."""
    ts, ac = schedule.timesteps, schedule.alphas_cumprod
    return [
        Step(ts[i], ts[i - 1] if i else -1, ac[i], ac[i - 1] if i else 1.0)
        for i in reversed(range(len(ts)))
    ]


def inversion_steps(schedule: Schedule) -> List[Step]:
    """diffae's ``ddim_reverse_sample_loop``: the spaced indices from first to last, ending at alpha 0."""
    ts, ac, n = schedule.timesteps, schedule.alphas_cumprod, len(schedule)
    return [
        Step(ts[i], ts[i + 1] if i + 1 < n else schedule.T, ac[i], ac[i + 1] if i + 1 < n else 0.0)
        for i in range(n)
    ]


def _check_partial(full_alphas_cumprod, t_0, n_steps):
    T = len(full_alphas_cumprod)
    if not 0 < t_0 < T:
        raise ValueError(f"t_0={t_0}: must lie in 1..{T - 1}")
    if n_steps < 0 or n_steps == 1:
        raise ValueError(f"n_steps={n_steps}: use 0 (every timestep) or at least 2 (the linspace includes 0 and t_0)")


def partial_inversion_steps(full_alphas_cumprod, t_0, n_steps) -> List[Step]:
    """DiffusionCLIP's inversion to ``t_0``: ``(seq[k-1], seq[k])`` for k = 1..n-1."""
    _check_partial(full_alphas_cumprod, t_0, n_steps)
    ac = full_alphas_cumprod
    seq = partial_timesteps(t_0, n_steps)
    return [Step(s, s_next, float(ac[s]), float(ac[s_next])) for s, s_next in zip(seq[:-1], seq[1:])]


def partial_generation_steps(full_alphas_cumprod, t_0, n_steps) -> List[Step]:
    """DiffusionCLIP's generation from ``t_0``: ``reversed(seq)`` paired with ``reversed([-1] + seq[:-1])``."""
    _check_partial(full_alphas_cumprod, t_0, n_steps)
    ac = full_alphas_cumprod
    seq = partial_timesteps(t_0, n_steps)
    nexts = [-1] + seq[:-1]
    return [Step(s, s_next, float(ac[s]), float(ac[s_next]) if s_next >= 0 else 1.0) for s, s_next in zip(reversed(seq), reversed(nexts))]


# ----------------------------------------------------------------------------
# One step


def _noise_like(x, generator):
    if generator is None:
        return torch.randn_like(x)
    # Drawn on the generator's device and moved, so a CPU generator gives the
    # same noise whatever device the images are on.
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def ddim_step(x_t, eps, alpha, alpha_next, *, eta=0.0, clip_x0=False, generator=None):
    """One DDIM update of ``x_t`` from cumulative alpha ``alpha`` to ``alpha_next``.

    Args:
        x_t: (B, C, H, W) current state.
        eps: (B, C, H, W) noise prediction at ``x_t``.
        alpha: alphas_cumprod at the current timestep (a float).
        alpha_next: alphas_cumprod at the target (1 for the clean image, 0
            for diffae's last inversion step).
        eta: DDIM stochasticity; 0 is deterministic. Must be 0 when
            ``alpha_next < alpha`` (inversion).
        clip_x0: diffae's ``clip_denoised``: clamp the x0 prediction to
            [-1, 1] and re-derive eps from it. False is DiffusionCLIP's step.
        generator: ``torch.Generator`` for the noise when ``eta > 0`` (None:
            the global generator). No noise is drawn when sigma is 0.

    Returns:
        ``(x_next, x0)``: the new state and the x0 prediction, both (B, C, H, W).
    """
    if eta and alpha_next < alpha:
        raise ValueError("DDIM inversion (towards more noise) is deterministic only: use eta=0")
    recip = math.sqrt(1.0 / alpha)
    recipm1 = math.sqrt(1.0 / alpha - 1.0)
    x0 = recip * x_t - recipm1 * eps
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (recip * x_t - x0) / recipm1
    sigma = eta * math.sqrt((1.0 - alpha_next) / (1.0 - alpha)) * math.sqrt(1.0 - alpha / alpha_next) if eta else 0.0
    x_next = math.sqrt(alpha_next) * x0 + math.sqrt(max(1.0 - alpha_next - sigma**2, 0.0)) * eps
    if sigma > 0:
        x_next = x_next + sigma * _noise_like(x_t, generator)
    return x_next, x0


# ----------------------------------------------------------------------------
# Loops


class StepOutput(NamedTuple):
    """What a loop yields after each step.

    Attributes:
        step: The :class:`Step` taken.
        x: (B, C, H, W) the state after it (carrying this step's graph).
        x0: (B, C, H, W) the x0 prediction of this step.
    """

    step: Step
    x: torch.Tensor
    x0: torch.Tensor


def ddim_loop(eps_fn: EpsFn, x, steps: Sequence[Step], *, eta=0.0, clip_x0=False, generator=None, detach=False, checkpoint=False) -> Iterator[StepOutput]:
    """Run DDIM ``steps`` from ``x``, yielding each step's :class:`StepOutput`.

    Gradient mode is the caller's (wrap in ``torch.no_grad()`` for plain sampling).

    Args:
        eps_fn: ``eps_fn(x (B, C, H, W), t (B,) long) -> eps``, t in original timesteps.
        x: (B, C, H, W) starting state.
        steps: From :func:`sampling_steps`, :func:`inversion_steps`,
            :func:`partial_inversion_steps` or :func:`partial_generation_steps`.
        eta, clip_x0, generator: As in :func:`ddim_step`.
        detach: Start every step from the previous state detached, so each
            yielded x0 (and x) has the graph of one network call only:
            DiffusionCLIP's per-step ("GPU-efficient") fine-tuning, where each
            step's x0 is backpropagated, and the optimizer may step, before
            the loop continues.
        checkpoint: Wrap each network call in ``torch.utils.checkpoint``
            (non-reentrant, RNG state preserved so dropout repeats), so a
            backward pass through the whole chain keeps one call's
            activations at a time: the same values and gradients, less
            memory. Do not change the parameters between the steps of a
            chain that is backpropagated as a whole.
    """
    for step in steps:
        t = torch.full((x.shape[0],), step.t, dtype=torch.long, device=x.device)
        if checkpoint and torch.is_grad_enabled():
            eps = grad_checkpoint.checkpoint(eps_fn, x, t, use_reentrant=False, preserve_rng_state=True)
        else:
            eps = eps_fn(x, t)
        x_next, x0 = ddim_step(x, eps, step.alpha, step.alpha_next, eta=eta, clip_x0=clip_x0, generator=generator)
        yield StepOutput(step, x_next, x0)
        x = x_next.detach() if detach else x_next


def run(eps_fn: EpsFn, x, steps: Sequence[Step], *, return_x0=False, **loop_kwargs):
    """The final state of :func:`ddim_loop`; with ``return_x0`` also the list of every step's x0 prediction."""
    x0s = []
    for out in ddim_loop(eps_fn, x, steps, **loop_kwargs):
        x = out.x
        if return_x0:
            x0s.append(out.x0)
    return (x, x0s) if return_x0 else x


def ddim_sample(eps_fn: EpsFn, x_T, schedule: Schedule, *, eta=0.0, clip_x0=True, generator=None, checkpoint=False):
    """diffae's ``ddim_sample_loop``: x_T (B, C, H, W) -> image (B, C, H, W) in [-1, 1] (with ``clip_x0``)."""
    return run(eps_fn, x_T, sampling_steps(schedule), eta=eta, clip_x0=clip_x0, generator=generator, checkpoint=checkpoint)


def ddim_reverse(eps_fn: EpsFn, x0, schedule: Schedule, *, clip_x0=True):
    """diffae's ``ddim_reverse_sample_loop`` (deterministic): image x0 (B, C, H, W) -> x_T (B, C, H, W)."""
    return run(eps_fn, x0, inversion_steps(schedule), clip_x0=clip_x0)


def partial_invert(eps_fn: EpsFn, x0, full_alphas_cumprod, t_0, n_steps, *, clip_x0=False):
    """DiffusionCLIP's deterministic inversion of x0 (B, C, H, W) to x_{t_0} (B, C, H, W) in ``n_steps - 1`` steps."""
    return run(eps_fn, x0, partial_inversion_steps(full_alphas_cumprod, t_0, n_steps), clip_x0=clip_x0)


def partial_generate(eps_fn: EpsFn, x_t, full_alphas_cumprod, t_0, n_steps, *, return_x0=False, **loop_kwargs):
    """DiffusionCLIP's generation from x_{t_0} (B, C, H, W) to an image in ``n_steps`` steps.

    ``loop_kwargs``: ``eta``, ``clip_x0``, ``generator``, ``detach``,
    ``checkpoint`` of :func:`ddim_loop`. Returns the image, or ``(image,
    [x0 of each step])`` with ``return_x0``.
    """
    steps = partial_generation_steps(full_alphas_cumprod, t_0, n_steps)
    return run(eps_fn, x_t, steps, return_x0=return_x0, **loop_kwargs)
