"""Focal, consistency and weather losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from roadwork_cache.training.losses import (
    LossWeights,
    consistency_loss,
    focal_loss,
    total_loss,
    weather_aux_loss,
)


def test_focal_confident_correct_below_confident_wrong():
    target = torch.tensor([1, 0])
    right = torch.tensor([[-4.0, 4.0], [4.0, -4.0]])
    assert focal_loss(right, target) < focal_loss(-right, target)
    # Focusing: a confident correct row costs far less than under plain cross-entropy.
    ratio = focal_loss(right, target, alpha=None, smoothing=0) / F.cross_entropy(right, target)
    assert ratio < 0.01


def test_focal_reduces_to_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 2, generator=g) * 3
    target = torch.randint(0, 2, (32,), generator=g)
    ce = F.cross_entropy(logits, target)
    plain = focal_loss(logits, target, gamma=0.0, alpha=None, smoothing=0.0)
    assert plain == pytest.approx(ce.item(), rel=1e-5)
    # alpha = 0.5 weights both classes by one half: exactly CE / 2.
    half = focal_loss(logits, target, gamma=0.0, alpha=0.5, smoothing=0.0)
    assert half == pytest.approx(ce.item() / 2, rel=1e-5)
    smoothed = focal_loss(logits, target, gamma=0.0, alpha=None, smoothing=0.1)
    ce_smooth = F.cross_entropy(logits, target, label_smoothing=0.1)
    assert smoothed == pytest.approx(ce_smooth.item(), rel=1e-5)


def test_focal_alpha_weights_positive_class():
    logits = torch.zeros(2, 2)
    pos = focal_loss(logits[:1], torch.tensor([1]), alpha=0.25, smoothing=0)
    neg = focal_loss(logits[1:], torch.tensor([0]), alpha=0.25, smoothing=0)
    assert pos.item() == pytest.approx(neg.item() / 3)


def test_focal_gradient_finite_when_saturated():
    logits = torch.tensor([[-200.0, 200.0]], requires_grad=True)
    focal_loss(logits, torch.tensor([1]), gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()


def test_consistency_zero_when_views_agree():
    one = torch.tensor([[0.3, -1.2]])
    agree = one.expand(4, 6, 2).clone() + torch.tensor([5.0, 5.0])  # same softmax per view
    assert consistency_loss(agree).item() == pytest.approx(0.0, abs=1e-6)
    views = agree.clone()
    views[:, 0] = torch.tensor([3.0, -3.0])
    loss = consistency_loss(views)
    assert loss.item() > 1e-3
    # The generalised Jensen-Shannon divergence of the views' predictions is bounded by the
    # entropy of their mean: log 2 for two classes, whatever the number of views.
    assert loss.item() <= math.log(2) + 1e-6
    # and reaches it when half the views are certain of one class and half of the other
    split = torch.tensor([[-30.0, 30.0]] * 3 + [[30.0, -30.0]] * 3).expand(4, 6, 2)
    assert consistency_loss(split).item() == pytest.approx(math.log(2), abs=1e-4)


def test_weather_loss_ignores_masked_rows():
    logits = torch.tensor([[2.0, -1.0], [5.0, 5.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([True, False])
    loss = weather_aux_loss(logits, target, mask)
    expected = F.binary_cross_entropy_with_logits(logits[:1], target[:1])
    assert loss.item() == pytest.approx(expected.item())
    # Changing a masked row changes nothing.
    logits2 = logits.clone()
    logits2[1] = torch.tensor([-9.0, 9.0])
    assert weather_aux_loss(logits2, target, mask).item() == pytest.approx(loss.item())
    # No known weather at all: zero, still backpropagates.
    zl = logits.clone().requires_grad_(True)
    none = weather_aux_loss(zl, target, torch.tensor([False, False]))
    none.backward()
    assert none.item() == 0.0 and torch.equal(zl.grad, torch.zeros_like(zl))


def test_total_loss_combines_weighted_terms():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 2, generator=g)
    target = torch.randint(0, 2, (8,), generator=g)
    views = torch.randn(8, 4, 2, generator=g)
    wl = torch.randn(8, 3, generator=g)
    wt = (torch.rand(8, 3, generator=g) > 0.5).float()
    mask = torch.tensor([True, False] * 4)
    w = LossWeights(focal=1.0, consistency=0.5, weather=0.2)
    parts = total_loss(logits, target, views, wl, wt, mask, weights=w)
    expected = (
        focal_loss(logits, target)
        + 0.5 * consistency_loss(views)
        + 0.2 * weather_aux_loss(wl, wt, mask)
    )
    assert parts.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts.to_dict()) == {"total", "focal", "consistency", "weather"}
    only_focal = total_loss(logits, target)
    assert only_focal.total.item() == pytest.approx(focal_loss(logits, target).item())
    assert only_focal.consistency.item() == 0.0


def test_total_loss_over_valid_rows_is_the_loss_of_those_rows_alone():
    """The batched fold trainer pads a fold's batch with real rows and marks them invalid:
    every term, and every gradient, must be what the valid rows alone give."""
    g = torch.Generator().manual_seed(2)
    n, pad = 6, 4
    logits = torch.randn(n + pad, 2, generator=g)
    logits[n:] *= 50  # padding that would dominate any term it leaked into
    target = torch.randint(0, 2, (n + pad,), generator=g)
    views = (
        torch.randn(n + pad, 4, 2, generator=g)
        * torch.tensor([1.0] * n + [30.0] * pad)[:, None, None]
    )
    wl = torch.randn(n + pad, 3, generator=g)
    wt = (torch.rand(n + pad, 3, generator=g) > 0.5).float()
    known = torch.tensor([True, False, True, True, False, True] + [True] * pad)
    valid = torch.arange(n + pad) < n
    w = LossWeights(focal=1.0, consistency=0.5, weather=0.2)
    inputs = [t.clone().requires_grad_(True) for t in (logits, views, wl)]
    alone = [t[:n].clone().requires_grad_(True) for t in (logits, views, wl)]
    padded = total_loss(inputs[0], target, inputs[1], inputs[2], wt, known, w, valid=valid)
    expect = total_loss(alone[0], target[:n], alone[1], alone[2], wt[:n], known[:n], w)
    for name in ("total", "focal", "consistency", "weather"):
        got, want = getattr(padded, name), getattr(expect, name)
        assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7), name
    padded.total.backward()
    expect.total.backward()
    for x, a in zip(inputs, alone, strict=True):
        assert torch.allclose(x.grad[:n], a.grad, atol=1e-7)
        assert torch.equal(x.grad[n:], torch.zeros_like(x.grad[n:]))  # padding learns nothing
    with pytest.raises(ValueError, match="not both"):
        total_loss(logits, target, sample_weight=torch.ones(n + pad), valid=valid)
