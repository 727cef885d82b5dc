"""IS, Frechet distance and SIFID: mathematical properties and the real Inception-v3 layout."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from ipl.metrics import (
    InceptionStem,
    build_inception,
    compute_inception_score,
    compute_sifid,
    frechet_distance,
    gaussian_statistics,
    inception_probabilities,
    inception_score,
    load_inception,
    load_sifid_stem,
)


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(1)
    return build_inception()


def images(n, size=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# --------------------------------------------------------------------------- IS


def test_inception_score_is_one_when_all_predictions_are_identical():
    row = torch.softmax(torch.randn(1, 1000, dtype=torch.float64), dim=1)
    mean, std = inception_score(row.repeat(100, 1), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_equals_class_count_for_balanced_one_hot_splits():
    num_classes, splits, per_class = 7, 10, 3
    labels = torch.arange(num_classes).repeat(per_class * splits)  # every split holds each class 3 times
    probs = torch.nn.functional.one_hot(labels, num_classes).double()
    mean, std = inception_score(probs, splits=splits)
    assert mean == pytest.approx(num_classes, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)


def naive_inception_score(probs, splits):
    """The original per-sample loop with scipy's KL divergence."""
    n = len(probs) // splits
    scores = []
    for k in range(splits):
        part = probs[k * n : (k + 1) * n]
        py = part.mean(axis=0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(p, py) for p in part])))
    return np.mean(scores), np.std(scores)


def test_inception_score_matches_the_naive_loop_and_drops_the_remainder():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(20, 0.3), size=103)  # 103 = 10 * 10 + 3 dropped rows
    mean, std = inception_score(torch.from_numpy(probs), splits=10)
    expected_mean, expected_std = naive_inception_score(probs, 10)
    assert mean == pytest.approx(expected_mean, rel=1e-10)
    assert std == pytest.approx(expected_std, rel=1e-8)


def test_inception_score_rejects_bad_probabilities():
    with pytest.raises(ValueError, match="at least splits"):
        inception_score(torch.full((5, 3), 1 / 3), splits=10)
    with pytest.raises(ValueError, match="non-negative"):
        inception_score(-torch.ones(20, 3), splits=2)


def test_inception_network_has_the_published_torchvision_layout(inception):
    shapes = {k: tuple(v.shape) for k, v in inception.state_dict().items()}
    # Facts of the Inception-v3 architecture, independent of torchvision's code.
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_2b_3x3.conv.weight"] == (64, 32, 3, 3)
    assert shapes["Conv2d_1a_3x3.bn.running_var"] == (32,)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["AuxLogits.fc.weight"] == (1000, 768)
    assert shapes["fc.weight"] == (1000, 2048)
    assert not inception.transform_input


def test_load_inception_reads_a_torchvision_state_dict_file(tmp_path, inception):
    torch.manual_seed(2)
    published = build_inception().state_dict()
    torch.save(published, tmp_path / "inception_v3_google-0cc3c7bd.pth")
    model = load_inception(tmp_path / "inception_v3_google-0cc3c7bd.pth")
    for key in ("Conv2d_1a_3x3.conv.weight", "fc.bias", "Mixed_6e.branch7x7dbl_5.bn.running_mean"):
        assert torch.equal(model.state_dict()[key], published[key])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_inception_probabilities_are_distributions_and_streaming_equals_one_shot(inception):
    x = images(4)  # 80x80, fed as is (image_size=None) to keep the test fast
    one_shot = inception_probabilities(inception, x, batch_size=4, image_size=None)
    streamed = inception_probabilities(inception, iter([x[:1], x[1:]]), image_size=None)
    assert one_shot.shape == (4, 1000) and one_shot.dtype == torch.float64
    assert torch.allclose(one_shot.sum(dim=1), torch.ones(4, dtype=torch.float64), atol=1e-5)
    assert (one_shot >= 0).all()
    assert torch.allclose(streamed, one_shot, atol=1e-6)
    mean, _ = compute_inception_score(inception, iter([x[:1], x[1:]]), splits=2, image_size=None)
    assert mean == pytest.approx(inception_score(one_shot, splits=2)[0], rel=1e-5)


def test_inception_probabilities_resize_bilinear_without_antialias(inception):
    # The protocol resizes to 299 like nn.Upsample(mode="bilinear"); 96 keeps the test fast.
    x = images(2, size=160)
    resized = torch.nn.Upsample(size=(96, 96), mode="bilinear")(x)
    assert torch.allclose(
        inception_probabilities(inception, x, image_size=96),
        inception_probabilities(inception, resized, image_size=None),
        atol=1e-6,
    )


def test_metrics_reject_images_in_the_wrong_format(inception):
    with pytest.raises(TypeError, match="127.5"):
        inception_probabilities(inception, (images(2) * 127.5 + 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match="batch axis"):
        inception_probabilities(inception, iter([images(1)[0]]))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        inception_probabilities(inception, images(2) * 127.5 + 127.5)


# ----------------------------------------------------------------- Frechet distance


def random_covariance(rng, d, rank=None):
    a = rng.standard_normal((d, rank or 2 * d))
    return a @ a.T / a.shape[1]


def naive_frechet(mu1, s1, mu2, s2):
    """The pytorch-fid formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_is_zero_for_identical_inputs_and_symmetric():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = random_covariance(rng, 6), random_covariance(rng, 6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_frechet_distance_with_equal_covariances_is_the_squared_mean_distance():
    rng = np.random.default_rng(1)
    mu1, mu2, s = rng.standard_normal(5), rng.standard_normal(5), random_covariance(rng, 5)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    a, b = rng.uniform(0.1, 3, 4), rng.uniform(0.1, 3, 4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_and_stays_real_for_singular_covariances():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    s1, s2 = random_covariance(rng, 8), random_covariance(rng, 8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(naive_frechet(mu1, s1, mu2, s2), rel=1e-8)
    low_rank = random_covariance(rng, 8, rank=3)  # singular: sqrtm(S1 S2) is ill-posed here
    value = frechet_distance(mu1, low_rank, mu2, s2)
    assert np.isfinite(value) and value >= 0


def test_gaussian_statistics_equal_numpy_mean_and_unbiased_covariance():
    x = np.random.default_rng(4).standard_normal((50, 3))
    mu, sigma = gaussian_statistics(torch.from_numpy(x))
    assert np.allclose(mu, x.mean(axis=0)) and np.allclose(sigma, np.cov(x, rowvar=False))


# ------------------------------------------------------------------------- SIFID


def test_inception_stem_is_the_inception_up_to_the_first_max_pool(inception):
    stem = InceptionStem.from_inception(inception)
    captured = {}
    hook = inception.Conv2d_2b_3x3.register_forward_hook(lambda m, i, o: captured.setdefault("map", o))
    x = images(2, size=91)
    with torch.no_grad():
        inception(x)
        features = stem(x)
    hook.remove()
    assert features.shape == (2, 64, 43, 43)  # (91 - 3) // 2 - 1
    assert torch.equal(features, captured["map"])


def test_load_sifid_stem_takes_the_stem_from_a_full_inception_file(tmp_path, inception):
    # pytorch-fid's file: same stem names, a 1008-class head and no auxiliary head.
    state = {k: v for k, v in inception.state_dict().items() if not k.startswith(("AuxLogits", "fc"))}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(state, tmp_path / "fid.pth")
    stem = load_sifid_stem(tmp_path / "fid.pth", weights="fid_inception_v3")
    assert torch.equal(stem.state_dict()["Conv2d_2a_3x3.conv.weight"], state["Conv2d_2a_3x3.conv.weight"])
    assert len(stem.state_dict()) == 3 * 6  # conv weight + 5 BatchNorm entries per layer


def test_sifid_of_an_image_with_itself_is_zero_and_positive_otherwise(inception):
    stem = InceptionStem.from_inception(inception)
    noise = images(1, size=64)
    ramp = torch.linspace(-1, 1, 64).expand(1, 3, 64, 64)  # smooth: different patch statistics
    same = compute_sifid(stem, noise, noise)
    other = compute_sifid(stem, noise, ramp)
    assert same.shape == (1,) and same[0] == pytest.approx(0.0, abs=1e-6)
    assert other[0] > 100 * 1e-6


def test_sifid_averages_per_location_frechet_distances_over_images_per_reference(inception):
    stem = InceptionStem.from_inception(inception)
    generated, references = images(3, size=48, seed=1), images(2, size=56, seed=2)
    result = compute_sifid(stem, iter([generated[:2], generated[2:]]), references)

    def stats(image):
        with torch.no_grad():
            fmap = stem(image[None])[0].double().numpy()  # (64, H', W')
        samples = fmap.reshape(64, -1).T  # one 64-d sample per location
        return samples.mean(axis=0), np.cov(samples, rowvar=False)

    expected = [
        np.mean([naive_frechet(*stats(g), *stats(r)) for g in generated]) for r in references
    ]
    assert result.shape == (2,)
    assert np.allclose(result, expected, rtol=1e-5)
    assert np.allclose(compute_sifid(stem, generated, list(references)), result)
