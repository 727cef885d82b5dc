"""Diffusion maths shared by the diffusion backends: noise schedule, timestep sequences, DDIM.

As diffusers and k-diffusion separate them, the network, the schedule and the
sampler live apart: a backend's model only predicts noise (``eps(x_t, t)``),
:mod:`.schedule` gives the cumulative alphas and the timesteps of a walk, and
:mod:`.ddim` steps through them.
"""

from .ddim import (
    EpsFn,
    Step,
    StepOutput,
    ddim_loop,
    ddim_reverse,
    ddim_sample,
    ddim_step,
    inversion_steps,
    partial_generate,
    partial_generation_steps,
    partial_invert,
    partial_inversion_steps,
    run,
    sampling_steps,
)
from .schedule import Schedule, alphas_cumprod, beta_schedule, linear_betas, partial_timesteps, respace, space_timesteps

__all__ = [
    "EpsFn",
    "Schedule",
    "Step",
    "StepOutput",
    "alphas_cumprod",
    "beta_schedule",
    "ddim_loop",
    "ddim_reverse",
    "ddim_sample",
    "ddim_step",
    "inversion_steps",
    "linear_betas",
    "partial_generate",
    "partial_generation_steps",
    "partial_invert",
    "partial_inversion_steps",
    "partial_timesteps",
    "respace",
    "run",
    "sampling_steps",
    "space_timesteps",
]
