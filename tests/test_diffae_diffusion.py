"""Diff-AE noise schedule, respacing, the DDIM step and the walks, checked against formulas written here."""

import math

import pytest
import torch

from ipl.backends.diffae import build_autoencoder
from ipl import diffusion as D

T = 1000


def naive_alphas_cumprod(T=1000):
    """diffae's linear schedule, element by element in Python floats."""
    scale = 1000 / T
    lo, hi = 1e-4 * scale, 0.02 * scale
    out, product = [], 1.0
    for t in range(T):
        product *= 1.0 - (lo + (hi - lo) * t / (T - 1))
        out.append(product)
    return out


AC = naive_alphas_cumprod()


def naive_step(x, eps, a, a_next, eta=0.0, clip=False, noise=None):
    """DDIM (Song et al. eq. 12) in float64: DiffusionCLIP's arithmetic; with ``clip``, eps made consistent with the clamped x0."""
    x, eps = x.double(), eps.double()
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    c1 = eta * math.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a)) if eta else 0.0
    c2 = math.sqrt(1 - a_next - c1**2)
    out = math.sqrt(a_next) * x0 + c2 * eps
    if c1:
        out = out + c1 * noise.double()
    return out.float(), x0.float()


def constant(c, calls=None):
    def eps_fn(x, t):
        if calls is not None:
            calls.append(int(t[0]))
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        return c.expand_as(x)

    return eps_fn


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------
# Schedule and respacing


def test_linear_schedule_and_alphas_cumprod_are_diffaes():
    betas = D.linear_betas(T)
    assert betas.dtype.name == "float64" and betas.shape == (T,)
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    ac = D.alphas_cumprod(betas)
    assert max(abs(a - b) / b for a, b in zip(ac, AC)) < 1e-12
    half = D.alphas_cumprod(D.linear_betas(500))  # diffae scales the betas by 1000 / T
    assert D.linear_betas(500)[0] == 2e-4 and abs(D.linear_betas(500)[-1] - 0.04) < 1e-15
    assert max(abs(a - b) / b for a, b in zip(half, naive_alphas_cumprod(500))) < 1e-12
    with pytest.raises(ValueError, match="linear"):
        D.beta_schedule("cosine", T)


@pytest.mark.parametrize(
    "n_steps, stride", [(10, 100), (20, 50), (30, 34), (40, 25), (50, 20), (100, 10), (200, 5), (250, 4), (334, 3), (500, 2), (1000, 1)]
)
def test_respacing_keeps_the_ddim_stride_and_the_alphas(n_steps, stride):
    kept = list(range(0, T, stride))
    assert len(kept) == n_steps
    assert D.space_timesteps(T, n_steps) == kept
    schedule = D.respace(D.alphas_cumprod(D.linear_betas(T)), n_steps)
    assert schedule.timesteps == tuple(kept) and schedule.T == T
    assert max(abs(a - AC[t]) / AC[t] for a, t in zip(schedule.alphas_cumprod, kept)) < 1e-12


@pytest.mark.parametrize("n_steps, nearest", [(300, "250, 334"), (1, "2"), (700, "500, 1000")])
def test_step_counts_without_an_integer_stride_are_refused(n_steps, nearest):
    with pytest.raises(ValueError, match=f"nearest step counts that work are {nearest}"):
        D.space_timesteps(T, n_steps)


def test_partial_timesteps_are_diffusionclips_linspace():
    assert D.partial_timesteps(400, 6) == [0, 80, 160, 240, 320, 400]
    seq = D.partial_timesteps(400, 40)  # k * 400 / 39, truncated
    assert seq[:6] == [0, 10, 20, 30, 41, 51] and seq[-1] == 400 and len(seq) == 40
    assert D.partial_timesteps(5, 0) == [0, 1, 2, 3, 4]  # "no skip"
    ac = D.alphas_cumprod(D.linear_betas(T))
    inv, gen_ = D.partial_inversion_steps(ac, 400, 6), D.partial_generation_steps(ac, 400, 6)
    assert [(s.t, s.t_next) for s in inv] == [(0, 80), (80, 160), (160, 240), (240, 320), (320, 400)]
    assert [(s.t, s.t_next) for s in gen_] == [(400, 320), (320, 240), (240, 160), (160, 80), (80, 0), (0, -1)]
    assert gen_[-1].alpha_next == 1.0 and abs(gen_[0].alpha - AC[400]) < 1e-15
    for bad in (dict(t_0=0, n_steps=6), dict(t_0=T, n_steps=6), dict(t_0=400, n_steps=1)):
        with pytest.raises(ValueError):
            D.partial_generation_steps(ac, **bad)


# ----------------------------------------------------------------------------
# One step


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("t, t_next", [(500, 400), (950, 900), (0, -1), (40, 0)])
def test_ddim_step_matches_the_formula(clip, eta, t, t_next):
    a, a_next = AC[t], (AC[t_next] if t_next >= 0 else 1.0)
    x = torch.randn(2, 3, 8, 8, generator=gen(1)) * 2
    eps = torch.randn(2, 3, 8, 8, generator=gen(2))
    noise = torch.randn(2, 3, 8, 8, generator=gen(3))
    out, x0 = D.ddim_step(x, eps, a, a_next, eta=eta, clip_x0=clip, generator=gen(3))
    want, want_x0 = naive_step(x, eps, a, a_next, eta, clip, noise)
    if clip and t > 100:
        assert (want_x0.abs() == 1).any()  # the clamp acts in this case
    torch.testing.assert_close(x0, want_x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip", [False, True])
def test_inversion_steps_match_the_formula_including_diffaes_last_one_to_alpha_zero(clip):
    x = torch.rand(2, 3, 8, 8, generator=gen(4)) * 1.8 - 0.9
    eps = torch.randn(2, 3, 8, 8, generator=gen(5)) * 0.3
    for a, a_next in ((AC[0], AC[50]), (AC[300], AC[400]), (AC[950], 0.0)):
        out, _ = D.ddim_step(x, eps, a, a_next, clip_x0=clip)
        torch.testing.assert_close(out, naive_step(x, eps, a, a_next, 0.0, clip)[0], rtol=1e-5, atol=1e-5)
    if not clip:
        torch.testing.assert_close(D.ddim_step(x, eps, AC[950], 0.0)[0], eps)  # at alpha 0 only the noise is left
    with pytest.raises(ValueError, match="eta=0"):
        D.ddim_step(x, eps, AC[300], AC[400], eta=0.5)


def test_a_step_and_its_reverse_are_inverse_for_the_same_noise_prediction():
    x = torch.randn(2, 3, 8, 8, generator=gen(6))
    eps = torch.randn(2, 3, 8, 8, generator=gen(7))
    there, _ = D.ddim_step(x, eps, AC[200], AC[350])
    back, _ = D.ddim_step(there, eps, AC[350], AC[200])
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


def test_noise_comes_from_the_generator_only():
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    state = torch.get_rng_state()
    first = D.ddim_step(x, eps, AC[500], AC[400], eta=1.0, generator=gen(11))[0]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, D.ddim_step(x, eps, AC[500], AC[400], eta=1.0, generator=gen(11))[0])
    assert not torch.equal(first, D.ddim_step(x, eps, AC[500], AC[400], eta=1.0, generator=gen(12))[0])
    # no noise is drawn where sigma is 0 (the last step), so the generator is left as it was
    g = gen(13)
    D.ddim_step(x, eps, AC[40], 1.0, eta=1.0, generator=g)
    assert torch.equal(g.get_state(), gen(13).get_state())


# ----------------------------------------------------------------------------
# Walks, for noise predictions whose walks have closed forms


def test_diffae_walks_visit_the_kept_timesteps_with_diffaes_end_points():
    ac = D.alphas_cumprod(D.linear_betas(T))
    schedule = D.respace(ac, 10)
    c = torch.randn(1, 3, 8, 8, generator=gen(8)) * 0.5
    x0 = torch.rand(2, 3, 8, 8, generator=gen(9)) * 1.6 - 0.8

    calls = []
    x_T = D.ddim_reverse(constant(c, calls), x0, schedule, clip_x0=False)
    assert calls == list(range(0, 1000, 100))
    torch.testing.assert_close(x_T, c.expand_as(x0), rtol=1e-5, atol=1e-5)  # the last step goes to alpha 0

    calls = []
    image = D.ddim_sample(constant(c, calls), x_T, schedule, clip_x0=False)
    assert calls == list(range(900, -1, -100))
    a = AC[900]  # the first step starts at the last kept timestep and the walk ends at alpha 1
    torch.testing.assert_close(image, (x_T - math.sqrt(1 - a) * c) / math.sqrt(a), rtol=1e-4, atol=1e-4)


def test_partial_generation_retraces_the_inversion_for_a_constant_noise_prediction():
    ac = D.alphas_cumprod(D.linear_betas(T))
    c = torch.randn(1, 3, 8, 8, generator=gen(10)) * 0.5
    x0 = torch.rand(2, 3, 8, 8, generator=gen(11)) * 2 - 1
    inverted = [x0] + [out.x for out in D.ddim_loop(constant(c), x0, D.partial_inversion_steps(ac, 400, 6))]
    calls = []
    generated = [out.x for out in D.ddim_loop(constant(c, calls), inverted[-1], D.partial_generation_steps(ac, 400, 6))]
    assert calls == [400, 320, 240, 160, 80, 0]
    for back, forth in zip(generated, reversed(inverted[:-1])):  # the states at 320, 240, 160, 80 and 0
        torch.testing.assert_close(back, forth, rtol=1e-5, atol=1e-5)
    a0 = 1 - 1e-4  # the last step denoises x0 as the state at timestep 0
    torch.testing.assert_close(generated[-1], (x0 - math.sqrt(1 - a0) * c) / math.sqrt(a0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(D.partial_invert(constant(c), x0, ac, 400, 6), inverted[-1])


def test_the_one_point_denoiser_is_reconstructed_exactly_by_both_inversion_and_rendering_pairs():
    """For data that is a single image mu, the exact noise prediction at x_t is (x_t - sqrt(a_t) mu) / sqrt(1 - a_t)."""
    mu = torch.rand(2, 3, 8, 8, generator=gen(12)) * 1.8 - 0.9

    def exact(x, t):
        a = torch.tensor([AC[i] for i in t.tolist()], dtype=torch.float64)[:, None, None, None]
        return ((x.double() - a.sqrt() * mu.double()) / (1 - a).sqrt()).float()

    ac = D.alphas_cumprod(D.linear_betas(T))
    schedule = D.respace(ac, 20)
    x_T = D.ddim_reverse(exact, mu, schedule)
    torch.testing.assert_close(x_T, mu * (1 - math.sqrt(AC[0])) / math.sqrt(1 - AC[0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(D.ddim_sample(exact, x_T, schedule), mu, rtol=1e-5, atol=1e-5)
    x_t = D.partial_invert(exact, mu, ac, 500, 40)
    torch.testing.assert_close(D.partial_generate(exact, x_t, ac, 500, 40), mu, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Gradients: per-step x0 predictions and checkpointed generation


@pytest.fixture(scope="module")
def tiny():
    return build_autoencoder("tiny", seed=0)


def inputs(model, seed=20):
    g = gen(seed)
    x0 = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    x_t = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        z = model.encode(x0)
    weights = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(5)]
    return x_t, z, weights


def gradients(model, *tensors):
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len([name for name, _ in model.named_parameters() if not name.startswith("net.encoder.")])
    grads.update({f"input{i}": t.grad.clone() for i, t in enumerate(tensors)})
    return grads


def test_per_step_x0_predictions_match_the_plain_walk_and_a_naive_per_step_backward(tiny):
    model = tiny.eval()
    x_t, z, weights = inputs(model)
    with torch.no_grad():
        image, x0s = model.generate(x_t, z, 300, 4, return_x0=True)

    model.zero_grad()
    zg = z.clone().requires_grad_()
    steps = list(model.generate_steps(x_t, zg, 300, 4))
    assert [(s.step.t, s.step.t_next) for s in steps] == [(300, 200), (200, 100), (100, 0), (0, -1)]
    for k, out in enumerate(steps):
        assert torch.equal(out.x0, x0s[k])
        (out.x0 * weights[k]).sum().backward()  # each step on its own, as DiffusionCLIP's per-step fine-tuning
    assert torch.equal(steps[-1].x.detach(), image)
    per_step = gradients(model, zg)

    # The same, written out: every step starts from the previous state detached. (x0 is written as the
    # library writes it, so that only the structure is compared here; the step's formula is checked above.)
    model.zero_grad()
    zn = z.clone().requires_grad_()
    x, loss = x_t, 0.0
    for k, (t, t_next) in enumerate([(300, 200), (200, 100), (100, 0), (0, -1)]):
        a, a_next = AC[t], (AC[t_next] if t_next >= 0 else 1.0)
        x_in = x.detach()
        eps = model.eps(x_in, t, zn)
        x0 = math.sqrt(1 / a) * x_in - math.sqrt(1 / a - 1) * eps
        loss = loss + (x0 * weights[k]).sum()
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    loss.backward()
    naive = gradients(model, zn)
    for name, grad in naive.items():
        torch.testing.assert_close(per_step[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointed_generation_gives_the_same_values_and_gradients_with_dropout_and_noise(tiny):
    model = tiny.train()  # dropout 0.1 acts: the recomputation must draw the same masks
    x_t, z, weights = inputs(model, seed=21)

    def walk(checkpoint, seed=7):
        model.zero_grad()
        xg, zg = x_t.clone().requires_grad_(), z.clone().requires_grad_()
        torch.manual_seed(seed)
        image, x0s = model.generate(xg, zg, 300, 4, eta=0.5, generator=gen(3), checkpoint=checkpoint, return_x0=True)
        loss = (image * weights[0]).sum() + sum((x0 * w).sum() for x0, w in zip(x0s, weights[1:]))
        loss.backward()
        return image.detach(), gradients(model, xg, zg)

    try:
        plain_image, plain = walk(False)
        other_seed, _ = walk(False, seed=8)
        assert not torch.equal(plain_image, other_seed)  # the premise: dropout changes the result
        image, checkpointed = walk(True)
    finally:
        model.eval()
    assert torch.equal(image, plain_image)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointed_generation_keeps_almost_nothing_for_the_backward_pass(tiny):
    model = tiny.eval()
    x_t, z, _ = inputs(model, seed=22)

    def saved_elements(checkpoint):
        count = [0]

        def pack(tensor):
            count[0] += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model.generate(x_t.clone().requires_grad_(), z, 400, 6, checkpoint=checkpoint)
        return count[0]

    plain, checkpointed = saved_elements(False), saved_elements(True)
    image = x_t.numel()
    assert plain > 200 * image  # every activation of six network calls
    assert checkpointed < 6 * 3 * image  # a few image-sized tensors per step
