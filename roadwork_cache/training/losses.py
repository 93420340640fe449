"""Stage two losses (docs/design.md §5): focal loss with label smoothing, multi-view
consistency, and the auxiliary weather loss, combined by ``total_loss``; the auxiliary
roadwork-mask losses (``coverage_loss``, ``pruning_mask_loss``) are added by ``mask_losses``
when the cache has masks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from roadwork_cache.runtime.errors import UserError


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    smoothing: float = 0.1,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Two-class focal loss (Lin et al. 2017) on ``logits [B, 2]`` and 0/1 ``target [B]``.

    Per row: ``-sum_c a_c * q_c * (1 - p_c) ** gamma * log p_c`` where ``q`` is the smoothed
    target (``1 - smoothing`` on the true class, ``smoothing / 2`` spread over both) and
    ``a = (1 - alpha, alpha)``: alpha weights the positive class (roadwork), as the paper's
    alpha weights the foreground. ``alpha=None`` means no class weighting (a = (1, 1)).
    Hence gamma=0, alpha=None, smoothing=0 is exactly cross-entropy, and alpha=0.5 is
    cross-entropy / 2. ``weight [B]`` are per-row weights; the mean is then
    ``sum(w * loss) / sum(w)``. ``reduction``: "mean", "sum" or "none".
    """
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise UserError(f"focal loss expects logits of shape [B, 2], got {tuple(logits.shape)}.")
    if target.shape != logits.shape[:1]:
        raise UserError(
            f"focal loss target must have shape [{logits.shape[0]}], got {tuple(target.shape)}."
        )
    if gamma < 0 or not 0.0 <= smoothing < 1.0 or (alpha is not None and not 0 <= alpha <= 1):
        raise UserError("focal loss needs gamma >= 0, smoothing in [0, 1) and alpha in [0, 1].")
    logp = F.log_softmax(logits.float(), dim=1)
    q = F.one_hot(target.long(), 2).float() * (1.0 - smoothing) + smoothing / 2.0
    per_class = -q * logp
    if gamma != 0:
        # expm1 keeps 1 - p accurate for confident rows; the clamp keeps the gradient of
        # (1 - p) ** gamma finite at p == 1 for gamma < 1.
        per_class = per_class * (-torch.expm1(logp)).clamp_min(1e-12).pow(gamma)
    if alpha is not None:
        per_class = per_class * logits.new_tensor([1.0 - alpha, alpha], dtype=torch.float32)
    loss = per_class.sum(dim=1)
    return _reduce(loss, weight, reduction)


def _reduce(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if weight is not None:
        weight = weight.to(loss).reshape(-1)
        if weight.shape != loss.shape:
            raise UserError(f"per-row weights must have shape {tuple(loss.shape)}.")
    if reduction == "none":
        return loss if weight is None else loss * weight
    if reduction == "sum":
        return loss.sum() if weight is None else (loss * weight).sum()
    if reduction == "mean":
        if weight is None:
            return loss.mean()
        return (loss * weight).sum() / weight.sum().clamp_min(1e-12)
    raise UserError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def consistency_loss(view_logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-view consistency on ``view_logits [B, k, C]``: the mean over rows and views of
    ``KL(p_v || p_mean)``, with ``p_v`` the softmax of view v and ``p_mean`` the mean of the
    per-view probabilities. ``valid [B]``: only these rows count (padding is left out).

    Direction: each view is compared *to* the consensus, so the sum over views is the
    generalised Jensen-Shannon divergence (bounded by log k, zero iff all views agree).
    ``p_mean`` is not detached: gradients pull every view toward the others and the
    consensus toward them, rather than treating the mean as a fixed teacher.
    """
    if view_logits.ndim != 3 or view_logits.shape[1] < 1:
        raise UserError("consistency loss expects view logits of shape [B, k, C].")
    logp = F.log_softmax(view_logits.float(), dim=-1)
    p = logp.exp()
    log_mean = torch.log(p.mean(dim=1, keepdim=True).clamp_min(1e-12))
    per_row = (p * (logp - log_mean)).sum(dim=-1).mean(dim=-1)  # [B]
    return per_row.mean() if valid is None else _masked_mean(per_row, valid)


def _masked_mean(per_row: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # torch.where, not a product: a padded row's value can never reach the sum
    n = valid.sum().clamp_min(1).to(per_row.dtype)
    return torch.where(valid, per_row, 0.0).sum() / n


def weather_aux_loss(
    logits: torch.Tensor, multi_hot: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of ``logits [B, C]`` against ``multi_hot [B, C]`` weather tags,
    averaged over rows where ``mask [B]`` is true (weather known) and all C tags.

    Rows with NULL weather are not "no weather": they are excluded, and with none left the
    loss is a zero that still belongs to the graph (so DDP and backward() see the head).
    """
    if logits.ndim != 2 or multi_hot.shape != logits.shape:
        raise UserError(
            "weather loss expects logits and multi-hot targets of the same shape [B, C]."
        )
    mask = mask.reshape(-1).bool()
    if mask.shape[0] != logits.shape[0]:
        raise UserError(f"weather mask must have shape [{logits.shape[0]}].")
    # A masked mean rather than logits[mask]: boolean indexing (and a test of mask.any())
    # would wait for the GPU on every step.
    per_row = F.binary_cross_entropy_with_logits(
        logits.float(), multi_hot.float(), reduction="none"
    ).mean(dim=1)
    keep = mask.float()
    return (per_row * keep).sum() / keep.sum().clamp(min=1.0)


def coverage_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``logits [B, V, C]`` against the roadwork share of each
    cell ``target [B, V, C]`` (soft targets in [0, 1]), averaged over views and cells, then
    over rows weighted by ``weight [B]`` (0 for a row without a mask). With no weight left
    it is a zero that still belongs to the graph."""
    if logits.shape != target.shape or logits.ndim != 3:
        raise UserError(
            f"coverage loss expects logits and targets of one shape [B, V, C], got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}."
        )
    per_row = F.binary_cross_entropy_with_logits(
        logits.float(), target.float(), reduction="none"
    ).mean(dim=(1, 2))
    w = weight.float().reshape(-1)
    return (per_row * w).sum() / w.sum().clamp(min=1.0)


def pruning_mask_loss(
    scores: torch.Tensor, coverage: torch.Tensor, weight: torch.Tensor, min_share: float = 0.005
) -> torch.Tensor:
    """Supervision of the pruning scorer by the masks: binary cross-entropy of each view's
    score ``scores [B, V]`` (a logit) against "the view holds roadwork" (its mean coverage
    over ``coverage [B, V, C]`` above ``min_share``), rows weighted by ``weight [B]``."""
    target = (coverage.float().mean(dim=-1) > min_share).float()  # [B, V]
    per_row = F.binary_cross_entropy_with_logits(scores.float(), target, reduction="none").mean(
        dim=1
    )
    w = weight.float().reshape(-1)
    return (per_row * w).sum() / w.sum().clamp(min=1.0)


def mask_losses(
    out, coverage: torch.Tensor, weight: torch.Tensor, weights: LossWeights
) -> tuple[torch.Tensor, torch.Tensor]:
    """(coverage loss, pruning supervision) of a head output against the masks of its rows
    ``coverage [B, V, C]``; a term without its input (no coverage predictor, no pruning) or
    with weight 0 is a zero tensor."""
    zero = out.logits.float().sum() * 0.0
    cover = prune = zero
    if out.coverage_logits is not None and weights.mask != 0:
        cover = coverage_loss(out.coverage_logits, coverage, weight)
    if out.view_scores is not None and weights.mask_pruning != 0:
        prune = pruning_mask_loss(out.view_scores, coverage, weight)
    return cover, prune


@dataclass
class LossWeights:
    """Multipliers of the loss terms in ``total_loss`` and ``mask_losses``. The mask terms
    apply only when the cache has masks: the coverage loss is then on by default, the
    pruning scorer's supervision by the masks is opt-in."""

    focal: float = 1.0
    consistency: float = 0.1
    weather: float = 0.1
    mask: float = 0.2
    mask_pruning: float = 0.0


@dataclass
class LossParts:
    """The combined loss and its unweighted terms (zero tensors for terms not computed;
    the mask terms are None in a run without masks)."""

    total: torch.Tensor
    focal: torch.Tensor
    consistency: torch.Tensor
    weather: torch.Tensor
    mask: torch.Tensor | None = None
    mask_pruning: torch.Tensor | None = None

    def to_dict(self) -> dict[str, float]:
        """Floats for logging (the mask terms only when they were computed)."""
        return {k: float(v.detach()) for k, v in asdict(self).items() if v is not None}


def total_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    view_logits: torch.Tensor | None = None,
    weather_logits: torch.Tensor | None = None,
    weather_target: torch.Tensor | None = None,
    weather_mask: torch.Tensor | None = None,
    weights: LossWeights | None = None,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    smoothing: float = 0.1,
    sample_weight: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> LossParts:
    """``focal * focal_loss + consistency * consistency_loss + weather * weather_aux_loss``.

    The consistency term needs ``view_logits``; the weather term needs ``weather_logits`` and
    ``weather_target`` (``weather_mask`` defaults to all rows). Terms without inputs, or with
    weight 0, are skipped and reported as 0. ``valid [B]`` (bool): only these rows count,
    every term a mean over them, as if the batch held them alone (the batched fold trainer
    pads its folds' batches to one width); not combined with ``sample_weight``.
    """
    w = weights or LossWeights()
    zero = logits.float().sum() * 0.0
    if valid is None:
        focal = focal_loss(
            logits, target, gamma=gamma, alpha=alpha, smoothing=smoothing, weight=sample_weight
        )
    else:
        if sample_weight is not None:
            raise ValueError("total_loss takes valid rows or sample weights, not both")
        per_row = focal_loss(logits, target, gamma, alpha, smoothing, reduction="none")
        focal = _masked_mean(per_row, valid)
    cons = zero
    if view_logits is not None and w.consistency != 0:
        cons = consistency_loss(view_logits, valid)
    weather = zero
    if weather_logits is not None and weather_target is not None and w.weather != 0:
        mask = weather_mask
        if mask is None:
            mask = torch.ones(
                weather_logits.shape[0], dtype=torch.bool, device=weather_logits.device
            )
        if valid is not None:
            mask = mask & valid
        weather = weather_aux_loss(weather_logits, weather_target, mask)
    total = w.focal * focal + w.consistency * cons + w.weather * weather
    return LossParts(total=total, focal=focal, consistency=cons, weather=weather)
