"""SCS with the HED network and ID with ArcFace IR-SE50: published layouts and properties."""

import pytest
import torch
import torch.nn.functional as F

from ipl.metrics import (
    HED,
    IRSE50,
    ArcFaceExtractor,
    arcface_preprocess,
    compute_id,
    compute_scs,
    identity_similarity,
    load_arcface,
    load_hed,
    quantize_edges,
    structural_consistency,
)


def images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def hed():
    torch.manual_seed(1)
    return HED()


@pytest.fixture(scope="module")
def arcface():
    torch.manual_seed(2)
    return ArcFaceExtractor(IRSE50())


# --------------------------------------------------------------------------- SCS


def test_structural_consistency_of_simple_pairs():
    e = torch.rand(3, 1, 8, 8) + 0.1
    assert torch.allclose(structural_consistency(e, e), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(structural_consistency(e, 2 * e), torch.full((3,), 0.8, dtype=torch.float64))
    assert torch.allclose(structural_consistency(e, torch.zeros_like(e)), torch.zeros(3, dtype=torch.float64))
    zero = torch.zeros(1, 1, 4, 4)
    assert structural_consistency(zero, zero).item() == 1.0  # two empty maps are identical
    with pytest.raises(ValueError, match="differ in shape"):
        structural_consistency(e, e[:, :, :4])


def test_quantize_edges_truncates_to_eight_bits_like_the_png_round_trip():
    edges = torch.tensor([0.0, 0.5, 0.99999, 1.0, 1.2, -0.1])
    expected = torch.tensor([0, 127, 254, 255, 255, 0]) / 255  # uint8(e * 255) truncates
    assert torch.equal(quantize_edges(edges), expected)


def published_hed_keys():
    """Key -> shape of network-bsds500.pytorch (the port's original 'module' names)."""
    stages = [("One", [3, 64, 64], 0), ("Two", [64, 128, 128], 1), ("Thr", [128, 256, 256, 256], 1),
              ("Fou", [256, 512, 512, 512], 1), ("Fiv", [512, 512, 512, 512], 1)]
    keys = {}
    for name, channels, first in stages:
        # Sequential index of each conv: [conv, relu]*n, shifted by 1 after a leading max-pool.
        for n, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            index = first + 2 * n
            keys[f"moduleVgg{name}.{index}.weight"] = (c_out, c_in, 3, 3)
            keys[f"moduleVgg{name}.{index}.bias"] = (c_out,)
        keys[f"moduleScore{name}.weight"] = (1, channels[-1], 1, 1)
        keys[f"moduleScore{name}.bias"] = (1,)
    keys["moduleCombine.0.weight"], keys["moduleCombine.0.bias"] = (1, 5, 1, 1), (1,)
    return keys


def test_hed_loads_a_state_dict_with_the_published_key_names(tmp_path):
    keys = published_hed_keys()
    assert len(keys) == 2 * 13 + 2 * 5 + 2  # 13 VGG16 convs, 5 side outputs, fuse
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) for k, shape in keys.items()}
    # The published file predates PyTorch's zip format: save in the legacy one.
    torch.save(state, tmp_path / "network-bsds500.pytorch", _use_new_zipfile_serialization=False)
    model = load_hed(tmp_path / "network-bsds500.pytorch")
    loaded = model.state_dict()
    assert torch.equal(loaded["netVggThr.5.weight"], state["moduleVggThr.5.weight"])
    assert torch.equal(loaded["netCombine.0.bias"], state["moduleCombine.0.bias"])
    assert set(loaded) == {k.replace("module", "net", 1) for k in keys}


def test_hed_converts_rgb_to_bgr_minus_the_bsds_mean(hed):
    x = images(2)
    x01 = (x + 1) / 2
    bgr_mean = torch.tensor([104.00698793, 116.66876762, 122.67891434]).view(1, 3, 1, 1)
    expected = x01[:, [2, 1, 0]] * 255 - bgr_mean
    assert torch.allclose(hed.caffe_input(x), expected, atol=1e-4)


def test_hed_edge_maps_are_probabilities_at_the_input_size(hed):
    with torch.no_grad():
        edges = hed(images(2, size=37)[:, :, :, :29])  # odd sizes exercise the upsampling
    assert edges.shape == (2, 1, 37, 29)
    assert (edges > 0).all() and (edges < 1).all()


def test_scs_of_images_with_themselves_is_one(hed):
    x = images(3)
    assert compute_scs(hed, x, x) == pytest.approx(1.0, abs=1e-12)


def test_scs_streaming_equals_the_mean_of_per_pair_scores(hed):
    source, target = images(3, seed=1), images(3, seed=2)
    with torch.no_grad():
        s, t = quantize_edges(hed(source)), quantize_edges(hed(target))
    expected = structural_consistency(s, t).mean().item()
    streamed = compute_scs(hed, iter([source[:2], source[2:]]), iter([target[:2], target[2:]]))
    assert streamed == pytest.approx(expected, rel=1e-6)
    assert 0 < streamed < 1


def test_scs_rejects_unpaired_streams(hed):
    x = images(3)
    with pytest.raises(ValueError, match="different number of batches"):
        compute_scs(hed, iter([x[:1]]), iter([x[:1], x[1:2]]))
    with pytest.raises(ValueError, match="same latent"):
        compute_scs(hed, iter([x[:2]]), iter([x]))


# ---------------------------------------------------------------------------- ID


def published_ir_se50_keys():
    """Key -> shape of model_ir_se50.pth, from the IR-SE50 description (no BN step counters)."""
    keys = {}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{name}"] = (c,)

    keys["input_layer.0.weight"] = (64, 3, 3, 3)
    bn("input_layer.1", 64)
    keys["input_layer.2.weight"] = (64,)
    unit = 0
    for c_in, depth, count in [(64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)]:
        for k in range(count):
            c = c_in if k == 0 else depth
            p = f"body.{unit}"
            if c != depth:
                keys[f"{p}.shortcut_layer.0.weight"] = (depth, c, 1, 1)
                bn(f"{p}.shortcut_layer.1", depth)
            bn(f"{p}.res_layer.0", c)
            keys[f"{p}.res_layer.1.weight"] = (depth, c, 3, 3)
            keys[f"{p}.res_layer.2.weight"] = (depth,)
            keys[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            bn(f"{p}.res_layer.4", depth)
            keys[f"{p}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            keys[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            unit += 1
    bn("output_layer.0", 512)
    keys["output_layer.3.weight"], keys["output_layer.3.bias"] = (512, 512 * 7 * 7), (512,)
    bn("output_layer.4", 512)
    return keys


def test_arcface_loads_a_state_dict_with_the_published_key_names(tmp_path):
    keys = published_ir_se50_keys()
    assert "body.3.shortcut_layer.0.weight" in keys and "body.0.shortcut_layer.0.weight" not in keys
    assert keys["body.23.res_layer.5.fc1.weight"] == (32, 512, 1, 1)
    state = {k: torch.rand(shape) + 0.5 for k, shape in keys.items()}  # positive running_var
    torch.save(state, tmp_path / "model_ir_se50.pth", _use_new_zipfile_serialization=False)
    extractor = load_arcface(tmp_path / "model_ir_se50.pth")
    loaded = extractor.backbone.state_dict()
    assert torch.equal(loaded["body.21.shortcut_layer.0.weight"], state["body.21.shortcut_layer.0.weight"])
    assert torch.equal(loaded["output_layer.4.running_var"], state["output_layer.4.running_var"])
    assert {k for k in loaded if not k.endswith("num_batches_tracked")} == set(keys)


def test_arcface_embeddings_are_unit_vectors(arcface):
    with torch.no_grad():
        features = arcface(images(1, size=256))
    assert features.shape == (1, 512)
    assert torch.allclose(features.norm(dim=1), torch.ones(1), atol=1e-5)


def test_arcface_preprocess_crops_the_face_region_of_a_256_image():
    x = -torch.ones(1, 3, 256, 256)
    x[:, :, 35:223, 32:220] = 1  # the crop region, nothing else
    assert torch.equal(arcface_preprocess(x), torch.ones(1, 3, 112, 112))
    big = x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # the same image at 1024
    assert torch.allclose(arcface_preprocess(big), arcface_preprocess(x), atol=1e-6)


def test_id_of_an_image_with_itself_is_one(arcface):
    x = images(1, size=256)
    assert compute_id(arcface, x, x) == pytest.approx(1.0, abs=1e-6)


def test_id_takes_any_feature_extractor():
    source, target = images(4, seed=3), images(4, seed=4)
    expected = F.cosine_similarity(source.flatten(1).double(), target.flatten(1).double()).mean().item()
    result = compute_id(lambda x: x.flatten(1), iter([source[:1], source[1:]]), iter([target[:1], target[1:]]))
    assert result == pytest.approx(expected, rel=1e-9)


def test_identity_similarity_of_orthogonal_and_opposite_features():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(identity_similarity(f, f.flip(1)), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(identity_similarity(f, -3 * f), -torch.ones(2, dtype=torch.float64))
