"""Losses of both stages against values worked out by hand on small vectors."""

import math

import pytest
import torch

from ipl.method import losses

S2 = math.sqrt(2)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_contrastive_official_by_hand():
    image = t([[2.0, 0.0], [0.0, 3.0]])  # normalised inside: e1, e2
    text = t([[1.0, 0.0], [0.6, 0.8]])  # already unit rows
    # logits = [[1, .6], [0, .8]] (scale 1). Rows (image -> text) and columns:
    # CE picks log(1 + exp(other - own)) for two classes.
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (sp(0.6 - 1) + sp(0 - 0.8) + sp(0 - 1) + sp(0.6 - 0.8)) / 4
    got = losses.contrastive_official(image, text, logit_scale=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # The logit scale multiplies the logits: with scale 100 the matched pairs win.
    assert losses.contrastive_official(image, text, logit_scale=100.0).item() == pytest.approx(
        (sp(-40) + sp(-80) + sp(-100) + sp(-20)) / 4, rel=1e-9
    )


def test_contrastive_official_detaches_images():
    image = torch.randn(3, 4, requires_grad=True)
    text = losses.normalize(torch.randn(3, 4, requires_grad=True))
    losses.contrastive_official(image, text, 100.0).backward()
    assert image.grad is None


def test_contrastive_paper_eq4_by_hand():
    image = t([[1.0, 0.0], [0.0, 1.0]])
    text = t([[2.0, 0.0], [0.6, 0.8]])
    # Sim = [[1, .6], [0, .8]]: off-diagonal sum .6, diagonal sum 1.8, n = 2.
    assert losses.contrastive_paper(image, text).item() == pytest.approx((0.6 - 1.8) / 2)


def test_domain_official_by_hand():
    target = t([[1.0, 0.0], [0.0, 1.0]])
    mean_t = t([3.0, 3.0])  # not normalised: only its direction matters
    assert losses.domain_official(target, mean_t).item() == pytest.approx(1 - 1 / S2)
    source = t([[1.0, 0.0], [1.0, 1.0]])
    mean_s = t([1.0, 0.0])
    # source term: mean(1 - 1, 1 - 1/sqrt2) weighted by lambda_src = 0.5
    got = losses.domain_official(target, mean_t, source, mean_s, lambda_src=0.5)
    assert got.item() == pytest.approx(1 - 1 / S2 + 0.5 * (1 - 1 / S2) / 2)


def test_domain_paper_eq5_by_hand():
    target = t([[1.0, 0.0], [1.0, 1.0]])
    label = t([0.0, 2.0])
    assert losses.domain_paper(target, label).item() == pytest.approx(-(0 + 1 / S2) / 2)


def test_stage1_total_is_eq6():
    torch.manual_seed(0)
    img, src, tgt = torch.randn(4, 8), losses.normalize(torch.randn(4, 8)), losses.normalize(torch.randn(4, 8))
    consts = {"source_templates": torch.randn(8), "target_templates": torch.randn(8), "target_label": torch.randn(8)}
    out = losses.stage1_losses(img, src, tgt, consts, lambda_domain=7.0, logit_scale=100.0)
    assert set(out) == {"contrastive", "domain", "total"}
    torch.testing.assert_close(out["total"], out["contrastive"] + 7.0 * out["domain"])
    paper = losses.stage1_losses(img, src, tgt, consts, "paper", "paper", lambda_domain=2.0)
    torch.testing.assert_close(paper["contrastive"], losses.contrastive_paper(img, src))
    torch.testing.assert_close(paper["domain"], losses.domain_paper(tgt, consts["target_label"]))
    with pytest.raises(ValueError, match="unknown"):
        losses.stage1_losses(img, src, tgt, consts, contrastive="eq4")


def test_with_handwritten_adds_before_normalising():
    learned = t([[3.0, 0.0]])
    hand = t([0.0, 4.0])
    torch.testing.assert_close(losses.with_handwritten(learned, hand), t([[0.6, 0.8]]))
    torch.testing.assert_close(losses.with_handwritten(learned), t([[1.0, 0.0]]))


def test_text_and_template_directions_by_hand():
    src, tgt = t([[2.0, 0.0]]), t([[0.0, 5.0]])
    torch.testing.assert_close(losses.text_directions(src, tgt), t([[-1 / S2, 1 / S2]]))
    # Templates: per-template unit differences averaged, then normalised.
    src_t = t([[1.0, 0.0], [1.0, 0.0]])
    tgt_t = t([[0.0, 1.0], [0.0, -1.0]])
    # differences (-1, 1) and (-1, -1): mean (-1, 0) -> (-1, 0)
    torch.testing.assert_close(losses.template_direction(src_t, tgt_t), t([-1.0, 0.0]))


def test_direction_loss_by_hand():
    src, tgt = t([[1.0, 0.0, 0.0]]), t([[0.0, 3.0, 0.0]])  # dI = (-1, 1, 0)/sqrt2
    assert losses.direction_loss(src, tgt, t([[-1.0, 1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.direction_loss(src, tgt, t([1.0, 0.0, 0.0])).item() == pytest.approx(1 + 1 / S2)
    # Per-image directions: the loss is the mean of the per-image terms.
    two = losses.direction_loss(src.repeat(2, 1), tgt.repeat(2, 1), t([[-1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert two.item() == pytest.approx((0 + 1 + 1 / S2) / 2)


def test_global_clip_loss_by_hand():
    image = t([[1.0, 0.0], [1.0, 1.0]])
    text = t([1.0, 0.0])
    assert losses.global_clip_loss(image, text, 100.0).item() == pytest.approx(((1 - 1) + (1 - 1 / S2)) / 2)


def test_losses_never_write_into_their_inputs():
    torch.manual_seed(1)
    args = [torch.randn(3, 5) for _ in range(3)]
    copies = [a.clone() for a in args]
    losses.contrastive_official(args[0], losses.normalize(args[1]), 100.0)
    losses.contrastive_paper(args[0], args[1])
    losses.domain_official(args[0], args[1][0], args[2], args[1][1], 1.0)
    losses.direction_loss(args[0], args[1], args[2])
    losses.with_handwritten(args[0], args[1][0])
    for a, c in zip(args, copies):
        assert torch.equal(a, c)
