"""Intra-cluster LPIPS and CLIP-feature metrics."""

import itertools

import pytest
import torch
import torchvision

from ipl.metrics import (
    build_lpips,
    clip_score,
    compute_clip_diversity,
    compute_clip_score,
    compute_intra_cluster_lpips,
    load_lpips,
    mean_pairwise_cosine_distance,
)


def mean_abs_distance(x, y):
    """A stand-in perceptual distance: per-pair mean absolute difference."""
    return (x - y).abs().flatten(1).mean(dim=1)


def clustered_images(per_cluster=4, levels=(-0.6, 0.0, 0.6), size=8, seed=0):
    """Images scattered tightly around constant-colour centres; returns (centres, images, labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.stack([torch.full((3, size, size), v) for v in levels])
    labels = torch.arange(len(levels)).repeat(per_cluster)[torch.randperm(len(levels) * per_cluster, generator=g)]
    images = centres[labels] + 0.1 * torch.randn(len(labels), 3, size, size, generator=g)
    return centres, images, labels


def naive_pairwise_mean(members):
    pairs = list(itertools.combinations(members, 2))
    return sum(mean_abs_distance(a[None], b[None]).item() for a, b in pairs) / len(pairs)


@pytest.fixture(scope="module")
def lpips_alex():
    torch.manual_seed(3)
    return build_lpips("alex")


def test_lpips_of_identical_images_is_zero(lpips_alex):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(lpips_alex(x, x).flatten(), torch.zeros(2))
        assert (lpips_alex(x, x.flip(0)).flatten() > 0).all()


def test_intra_cluster_lpips_assigns_to_the_nearest_centre_and_averages_pairs():
    centres, images, labels = clustered_images()
    result = compute_intra_cluster_lpips(mean_abs_distance, images, centres, image_size=None)
    assert result.cluster_sizes == (4, 4, 4)
    expected = [naive_pairwise_mean(images[labels == k]) for k in range(3)]
    assert result.per_cluster == pytest.approx(expected, rel=1e-9)
    assert result.mean == pytest.approx(sum(expected) / 3, rel=1e-9)
    assert result.std == pytest.approx(torch.tensor(expected).std().item(), rel=1e-6)


def test_intra_cluster_lpips_streaming_equals_one_shot():
    centres, images, _ = clustered_images(per_cluster=5)
    one_shot = compute_intra_cluster_lpips(mean_abs_distance, images, centres, image_size=None, max_per_cluster=3)
    streamed = compute_intra_cluster_lpips(
        mean_abs_distance, iter(images.split(1)), centres, image_size=None, max_per_cluster=3
    )
    assert streamed == one_shot


def test_intra_cluster_lpips_subsamples_members_uniformly_from_a_seed():
    centres, images, labels = clustered_images(per_cluster=7, levels=(-0.5, 0.5))
    result = compute_intra_cluster_lpips(mean_abs_distance, images, centres, image_size=None, max_per_cluster=3)
    assert result.cluster_sizes == (7, 7)
    for k in range(2):
        members = images[labels == k]
        # The score of cluster k is the pairwise mean of one of its 3-member subsets.
        candidates = [naive_pairwise_mean(members[list(s)]) for s in itertools.combinations(range(7), 3)]
        assert any(abs(result.per_cluster[k] - c) < 1e-9 for c in candidates)
    again = compute_intra_cluster_lpips(mean_abs_distance, images, centres, image_size=None, max_per_cluster=3)
    assert again == result


def test_intra_cluster_lpips_takes_centres_from_the_stream_and_skips_small_clusters():
    _, images, _ = clustered_images(per_cluster=3)
    result = compute_intra_cluster_lpips(mean_abs_distance, images, num_clusters=4, image_size=None)
    assert len(result.per_cluster) == 4
    assert sum(result.cluster_sizes) == len(images) - 4  # centres are not members
    valid = [d for d in result.per_cluster if d == d]
    assert result.mean == pytest.approx(sum(valid) / len(valid))
    with pytest.raises(ValueError, match="num_clusters"):
        compute_intra_cluster_lpips(mean_abs_distance, images[:3], num_clusters=4)


def test_intra_cluster_lpips_with_real_lpips_is_zero_for_collapsed_clusters(lpips_alex):
    centres = torch.rand(2, 3, 32, 32) * 2 - 1
    collapsed = centres[[0, 1, 0, 1, 0, 1]] * 0.99  # every cluster holds copies of one image
    result = compute_intra_cluster_lpips(lpips_alex, collapsed, centres, image_size=32)
    assert result.cluster_sizes == (3, 3)
    assert result.mean == pytest.approx(0.0, abs=1e-7)
    diverse = compute_intra_cluster_lpips(lpips_alex, torch.rand(6, 3, 32, 32) * 2 - 1, centres, image_size=32)
    assert diverse.mean > 1e-3


def test_load_lpips_maps_torchvision_alexnet_weights_into_the_backbone(tmp_path):
    torch.manual_seed(4)
    published = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(published, tmp_path / "alexnet-owt-7be5be79.pth")
    model = load_lpips("alex", tmp_path / "alexnet-owt-7be5be79.pth")
    backbone = model.net.state_dict()
    assert torch.equal(backbone["slice1.0.weight"], published["features.0.weight"])
    assert torch.equal(backbone["slice5.10.bias"], published["features.10.bias"])
    assert len(backbone) == 10  # AlexNet's 5 convolutions


@pytest.mark.slow
def test_load_lpips_maps_torchvision_vgg16_weights_into_the_backbone(tmp_path):
    published = torchvision.models.vgg16(weights=None).state_dict()
    torch.save(published, tmp_path / "vgg16-397923af.pth")
    backbone = load_lpips("vgg", tmp_path / "vgg16-397923af.pth").net.state_dict()
    assert torch.equal(backbone["slice5.28.weight"], published["features.28.weight"])
    assert len(backbone) == 26  # VGG16's 13 convolutions


# ------------------------------------------------------------------------- CLIP


def test_clip_score_is_the_mean_cosine_to_the_text():
    f = torch.randn(5, 16)
    assert clip_score(f, f) == pytest.approx(1.0)
    assert clip_score(f, f, scale=100) == pytest.approx(100.0)
    text = torch.zeros(16)
    text[0] = 1
    orthogonal = torch.randn(5, 16)
    orthogonal[:, 0] = 0
    assert clip_score(orthogonal, text) == pytest.approx(0.0, abs=1e-12)
    expected = torch.nn.functional.cosine_similarity(f.double(), text.double()[None]).mean().item()
    assert clip_score(f, text[None]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="do not fit"):
        clip_score(f, torch.randn(3, 16))


def test_mean_pairwise_cosine_distance_matches_a_double_loop():
    f = torch.randn(6, 8, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity
    pairs = list(itertools.combinations(range(6), 2))
    expected = sum(1 - cos(f[i], f[j], dim=0).item() for i, j in pairs) / len(pairs)
    assert mean_pairwise_cosine_distance(f) == pytest.approx(expected, rel=1e-12)
    assert mean_pairwise_cosine_distance(f[:1].repeat(4, 1)) == pytest.approx(0.0, abs=1e-12)


def test_streamed_clip_metrics_equal_the_pure_functions():
    projection = torch.randn(3 * 4 * 4, 10, generator=torch.Generator().manual_seed(5))

    def encode_image(x):
        return x.flatten(1) @ projection

    images = torch.rand(7, 3, 4, 4) * 2 - 1
    batches = [images[:3], images[3:4], images[4:]]
    # Encoded batch by batch, as the streamed functions do: a float32 matmul
    # over all 7 rows may round differently.
    features = torch.cat([encode_image(b) for b in batches])
    text = torch.randn(10)
    assert compute_clip_diversity(encode_image, iter(batches)) == pytest.approx(
        mean_pairwise_cosine_distance(features), rel=1e-10
    )
    assert compute_clip_score(encode_image, iter(batches), text, scale=100) == pytest.approx(
        clip_score(features, text, scale=100), rel=1e-10
    )
