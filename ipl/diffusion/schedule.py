"""Noise schedules and timestep sequences of the diffusion models, as plain functions.

Written from diffae's ``diffusion/base.py`` and ``diffusion/diffusion.py``
and DiffusionCLIP's ``utils/diffusion_utils.py`` and ``diffusionclip.py``;
:mod:`ipl.diffusion.ddim` walks them.

* Ho et al.'s ``linear`` schedule, as diffae writes it: ``betas =
  linspace(1e-4 s, 0.02 s, T)`` in float64 with ``s = 1000 / T`` (s = 1 for
  the T = 1000 of every released model, DiffusionCLIP's DDPMs included);
  ``alphas_cumprod = cumprod(1 - betas)`` in float64. DiffusionCLIP's
  ``denoising_step`` takes the same cumulative product in float32; here the
  float64 one serves both backends (the same schedule at higher precision).
* diffae samples with ``T_eval`` (or the ``T`` argument of ``render`` /
  ``encode_stochastic``) steps through ``space_timesteps(T, "ddim<N>")``:
  the kept timesteps are ``range(0, T, k)`` for the smallest integer stride
  k giving exactly N of them (so only some N are possible: for T = 1000,
  20, 30, 50, 100, 250 or 1000 work, 300 does not). The spaced process
  recomputes its betas from the kept ``alphas_cumprod`` and multiplies them
  again, which gives back ``alphas_cumprod[kept]`` (to float64 rounding).
  Its network is called with the original timestep of each spaced index
  (``_WrappedModel``'s map); ``rescale_timesteps`` is False in every
  released config, so the network sees the integer timestep itself.
* DiffusionCLIP's partial schedule to ``t_0`` in n steps: ``seq = [int(s)
  for s in linspace(0, 1, n) * t_0]``; ``n = 0`` is its "no skip" (every
  timestep below ``t_0``), used for its training schedule.
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np


# ----------------------------------------------------------------------------
# Noise schedule and respacing


def linear_betas(T=1000):
    """diffae's ``linear`` beta schedule (float64, (T,)): Ho et al.'s 1e-4..0.02, scaled by 1000 / T."""
    scale = 1000 / T
    return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)


def beta_schedule(name, T=1000):
    """The betas (float64, (T,)) of a schedule by diffae's ``beta_scheduler`` name."""
    if name != "linear":
        raise ValueError(f"beta schedule {name!r}: only diffae's 'linear' schedule (that of every released model) is implemented")
    return linear_betas(T)


def alphas_cumprod(betas):
    """``cumprod(1 - betas)`` in float64, (T,)."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def space_timesteps(T, n_steps):
    """diffae's ``space_timesteps(T, "ddim<n_steps>")``: the kept original timesteps, ascending.

    ``range(0, T, k)`` for the smallest stride k >= 1 that keeps exactly
    ``n_steps`` timesteps.

    Raises:
        ValueError: no integer stride gives ``n_steps`` (the message lists
            the nearest counts that work).
    """
    for stride in range(1, T):
        if len(range(0, T, stride)) == n_steps:
            return list(range(0, T, stride))
    possible = sorted({len(range(0, T, k)) for k in range(1, T)})
    below = max((n for n in possible if n < n_steps), default=None)
    above = min((n for n in possible if n > n_steps), default=None)
    near = ", ".join(str(n) for n in (below, above) if n is not None)
    raise ValueError(
        f"{n_steps} DDIM steps: diffae's spacing keeps range(0, {T}, k) for an integer stride k, "
        f"which never gives {n_steps} timesteps; the nearest step counts that work are {near}"
    )


@dataclass(frozen=True)
class Schedule:
    """A respaced DDIM schedule.

    Attributes:
        timesteps: Original timestep of each spaced index, ascending (what the network is given).
        alphas_cumprod: Cumulative alpha (float64) at each of them.
        T: Length of the original process.
    """

    timesteps: Tuple[int, ...]
    alphas_cumprod: Tuple[float, ...]
    T: int

    def __len__(self):
        return len(self.timesteps)


def respace(full_alphas_cumprod, n_steps):
    """The :class:`Schedule` diffae samples with when asked for ``n_steps`` steps (``_make_diffusion_conf(T=n_steps)``)."""
    full = np.asarray(full_alphas_cumprod, dtype=np.float64)
    kept = space_timesteps(len(full), n_steps)
    # diffae's SpacedDiffusion: betas of the kept steps from consecutive kept
    # alphas, then their cumulative product again (equal to full[kept] up to
    # float64 rounding; done the same way so the coefficients are the same).
    betas, last = [], 1.0
    for t in kept:
        betas.append(1.0 - full[t] / last)
        last = full[t]
    spaced = alphas_cumprod(betas)
    return Schedule(tuple(kept), tuple(float(a) for a in spaced), len(full))


def partial_timesteps(t_0, n_steps):
    """DiffusionCLIP's timesteps up to ``t_0``: ``[int(s) for s in linspace(0, 1, n_steps) * t_0]``.

    ``n_steps = 0`` gives every timestep ``0..t_0-1`` (its "no skip" training schedule).
    """
    if n_steps == 0:
        return list(range(t_0))
    return [int(s) for s in np.linspace(0, 1, n_steps) * t_0]
