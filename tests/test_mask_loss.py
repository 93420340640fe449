"""The auxiliary mask losses: the coverage predictor, the losses, the trainer's use of the
cache's masks, and on planted features what they buy."""

import json

import numpy as np
import torch
import torch.nn.functional as F

from helpers import SMALL_HEAD, planted_cache, run_cli
from roadwork_cache.heads import HeadConfig, MetadataBatch, RoadworkHead
from roadwork_cache.heads.forward import head_outputs
from roadwork_cache.training.loop import TrainConfig, Trainer
from roadwork_cache.training.losses import (
    LossWeights,
    coverage_loss,
    mask_losses,
    pruning_mask_loss,
)
from roadwork_cache.training.metrics import binary_metrics


def head(grid: int, seed: int = 0, **over) -> RoadworkHead:
    torch.manual_seed(seed)
    return RoadworkHead(HeadConfig(in_dim=16, mask_grid=grid, **{**SMALL_HEAD, **over}))


def test_coverage_logits_cover_every_view_even_with_pruning():
    x = torch.randn(3, 12, 16)
    out = head(4, keep=5)(x)
    assert out.coverage_logits.shape == (3, 12, 16) and out.view_index.shape == (3, 5)
    assert head(0)(x).coverage_logits is None


def test_a_head_with_and_one_without_the_predictor_start_alike():
    with_masks, without = head(4).state_dict(), head(0).state_dict()
    assert set(with_masks) - set(without) == {k for k in with_masks if k.startswith("coverage.")}
    assert all(torch.equal(without[k], with_masks[k]) for k in without)


def test_coverage_loss_is_soft_bce_over_rows_with_a_mask():
    logits, target = torch.randn(4, 12, 16), torch.rand(4, 12, 16)
    weight = torch.tensor([1.0, 0.0, 1.0, 0.0])
    rows = [0, 2]
    expected = F.binary_cross_entropy_with_logits(logits[rows], target[rows])
    torch.testing.assert_close(coverage_loss(logits, target, weight), expected)
    # rows without a mask change nothing, whatever their targets
    other = target.clone()
    other[[1, 3]] = 1 - other[[1, 3]]
    torch.testing.assert_close(coverage_loss(logits, other, weight), expected)
    assert coverage_loss(logits, target, torch.zeros(4)) == 0


def test_pruning_supervision_targets_views_holding_roadwork():
    coverage = torch.zeros(2, 12, 16)
    coverage[0, 3, :4] = 1.0  # a quarter of view 3: roadwork
    coverage[0, 5, 0] = 0.01  # a speck in view 5: 0.06 % of the view, below the bound
    scores = torch.randn(2, 12, requires_grad=True)
    target = torch.zeros(2, 12)
    target[0, 3] = 1.0
    expected = F.binary_cross_entropy_with_logits(scores, target)
    torch.testing.assert_close(pruning_mask_loss(scores, coverage, torch.ones(2)), expected)


def test_mask_losses_without_their_inputs_are_zeros_in_the_graph():
    model = head(0, keep=None)  # no coverage predictor, no pruning scores
    out = model(torch.randn(2, 12, 16))
    cover, prune = mask_losses(out, torch.rand(2, 12, 16), torch.ones(2), LossWeights())
    assert cover == 0 and prune == 0 and cover.requires_grad


def features(n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 16)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.int64)
    cfg = HeadConfig(in_dim=16, **SMALL_HEAD)
    none = [None] * n
    meta = MetadataBatch.from_values(cfg, gps=none, weather=[[]] * n, daytime=none, scene=none)
    return x, y, meta


def train(model, x, y, meta, masks=None, present=None, epochs=2):
    cfg = TrainConfig(epochs=epochs, batch_size=32, patience=epochs, seed=0)
    trainer = Trainer(model, cfg, [x], y, meta, torch.device("cpu"), masks=masks,
                      mask_present=present)  # fmt: skip
    return trainer.fit(np.arange(64), np.arange(64, len(y)))


def test_rows_without_a_mask_train_exactly_as_without_masks(one_thread):
    x, y, meta = features()
    # no dropout: the predictor's pass through the pyramid would draw other dropout masks
    plain, masked = head(0, dropout=0.0), head(4, dropout=0.0)
    train(plain, x, y, meta)
    coverage = np.random.default_rng(3).random((len(y), 12, 16)).astype(np.float16)
    result = train(masked, x, y, meta, [coverage], np.zeros(len(y), bool))
    assert all(log.mask == 0 for log in result.history)
    trained = masked.state_dict()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=0)


def test_rows_with_a_mask_train_the_predictor(one_thread):
    x, y, meta = features()
    coverage = np.random.default_rng(3).random((len(y), 12, 16)).astype(np.float16)
    result = train(head(4), x, y, meta, [coverage], None)
    assert all(log.mask > 0 for log in result.history)


# ---- planted: masks mark the view that holds the signal ------------------------------------


def planted_views(n, seed, signal=3.0, dim=32):
    """Positives carry `signal * u` in one or two tiles; the masks mark those tiles (a 2 x 2
    block of cells each), the other views are empty."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.int64)
    x = rng.normal(size=(n, 12, dim)).astype(np.float32)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    planted = np.zeros((n, 12), bool)
    coverage = np.zeros((n, 12, 16), np.float32)
    for i in np.flatnonzero(y):
        for v in rng.choice(np.arange(1, 10), size=rng.integers(1, 3), replace=False):
            planted[i, v] = True
            x[i, v] += signal * u
            r, c = rng.integers(0, 3, size=2)
            coverage[i, v].reshape(4, 4)[r : r + 2, c : c + 2] = 1.0
    return x, y, planted, coverage


def test_compare_mask_loss_trains_both_and_reports_both(monkeypatch, capsys, tmp_path, one_thread):
    from roadwork_cache.inference.head_folder import load_head
    from roadwork_cache.inference.run_folder import read_run

    cache, _, _ = planted_cache(tmp_path / "cache", n=150, masks=True)
    run = tmp_path / "run"
    code = run_cli(
        monkeypatch, "train-head", "--cache", cache, "--out", run, "--epochs", "2", "--dim", "32",
        "--layers", "1", "--heads", "4", "--device", "cpu", "--no-progress",
        "--compare-mask-loss", "--mask-pruning", "0.5",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "with and without the mask loss" in captured.out + captured.err
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["model"] for r in metrics["rows"]} == {"head", "probe", "baseline", "head-nomask"}
    masks = metrics["masks"]
    assert masks["used"] and masks["weight"] == 0.2 and masks["pruning_weight"] == 0.5
    assert masks["rows_with_mask"] == 150 and masks["grid"] == 4
    assert all(h["mask"] > 0 and h["mask_pruning"] > 0 for h in metrics["history"])
    assert "head-nomask_clean_none" in read_run(run).predictions
    model, record = load_head(run)  # the saved head (with its predictor) loads for inference
    assert record.head["mask_grid"] == 4 and model.coverage is not None


def test_compare_mask_loss_needs_masks(monkeypatch, capsys, tmp_path):
    cache, _, _ = planted_cache(tmp_path / "cache", n=60)
    code = run_cli(monkeypatch, "train-head", "--cache", cache, "--out", tmp_path / "run",
                   "--epochs", "1", "--no-progress", "--compare-mask-loss")  # fmt: skip
    assert code == 2 and "needs masks of the training variants" in capsys.readouterr().err


def fit_planted(seed: int, with_masks: bool) -> tuple[float, float]:
    """(pruning's recall of the planted views on test positives, test MCC at 0.5) of a head
    keeping 2 of 12 views, trained with the default mask loss or without masks."""
    # a large validation set: the best epoch is chosen on it, and a small one makes that
    # choice (and so every figure) noisy
    x, y, planted, coverage = planted_views(1520, seed)
    train_idx, val_idx, test_idx = np.arange(320), np.arange(320, 720), np.arange(720, 1520)
    config = HeadConfig(
        in_dim=32, keep=2, **{**SMALL_HEAD, "dropout": 0.0}, mask_grid=4 if with_masks else 0
    )
    torch.manual_seed(seed)
    model = RoadworkHead(config)
    none = [None] * len(y)
    meta = MetadataBatch.from_values(config, gps=none, weather=[[]] * len(y), daytime=none,
                                     scene=none)  # fmt: skip
    cfg = TrainConfig(epochs=15, batch_size=32, lr=3e-3, patience=15, seed=seed)
    assert cfg.loss.mask > 0 and cfg.loss.mask_pruning == 0  # the defaults
    trainer = Trainer(model, cfg, [x], y, meta, torch.device("cpu"),
                      masks=[coverage] if with_masks else None)  # fmt: skip
    trainer.fit(train_idx, val_idx)
    prob, _ = head_outputs(model, x[test_idx], None, torch.device("cpu"))
    mcc = binary_metrics(y[test_idx], prob, 0.5)["mcc"]
    with torch.no_grad():
        kept = model(torch.from_numpy(x[test_idx])).view_index.numpy()
    pos = np.flatnonzero(y[test_idx])
    rows = test_idx[pos]
    recall = np.mean(
        [planted[i][k].sum() / planted[i].sum() for i, k in zip(rows, kept[pos], strict=True)]
    )
    return float(recall), float(mcc)


def test_the_mask_loss_raises_pruning_recall_of_the_signal_view_and_keeps_mcc(one_thread):
    """Positives carry the signal in one or two of the 12 views and the masks mark those;
    the head keeps 2 views. Over three seeds, the default mask loss makes pruning keep the
    marked views more often, and the test MCC does not fall.

    (Measured with this code over seeds 0-7: recall 0.56 -> 0.66 on average, higher in 6
    seeds and equal in one; MCC 0.47 -> 0.59, higher in 7; seed 4 learns nothing either
    way.)"""
    without = [fit_planted(seed, False) for seed in (0, 1, 2)]
    with_masks = [fit_planted(seed, True) for seed in (0, 1, 2)]
    recall = [np.mean([r for r, _ in runs]) for runs in (without, with_masks)]
    mcc = [np.mean([m for _, m in runs]) for runs in (without, with_masks)]
    assert recall[1] > recall[0] + 0.05, (without, with_masks)
    assert mcc[1] >= mcc[0], (without, with_masks)


def test_pruning_supervision_teaches_the_scorer_which_views_hold_roadwork(one_thread):
    from sklearn.metrics import roc_auc_score

    x, y, planted, coverage = planted_views(400, 0)
    torch.manual_seed(0)
    model = RoadworkHead(HeadConfig(in_dim=32, keep=2, **{**SMALL_HEAD, "dropout": 0.0}))
    weights = LossWeights(mask=0.0, mask_pruning=1.0)
    optim = torch.optim.Adam(model.pruning.parameters(), lr=1e-2)
    feats, cover = torch.from_numpy(x), torch.from_numpy(coverage)

    def auc() -> float:
        with torch.no_grad():
            scores = model(feats[200:]).view_scores.numpy()
        return roc_auc_score(planted[200:].ravel(), scores.ravel())

    before = auc()
    for _ in range(100):
        _, loss = mask_losses(model(feats[:200]), cover[:200], torch.ones(200), weights)
        optim.zero_grad()
        loss.backward()
        optim.step()
    # a 3-sigma signal along one direction allows an AUC of 0.98 at best
    assert before < 0.7 and auc() > 0.9, (before, auc())
