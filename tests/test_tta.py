"""FOODS test-time augmentation: the weighting itself, and `roadwork tta` on planted features
where some TTA variants are out of distribution and lie about the label."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import HEAD_32, run_cli
from roadwork_cache.inference.foods import (
    STATS_FILE,
    FoodsSettings,
    FoodsStats,
    foods_weights,
    load_stats,
    n_kept,
    save_stats,
    uniform_weights,
    weighted_probability,
)
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.stages.train_head import run_train_head
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.metrics import binary_metrics
from roadwork_cache.training.prepare import TrainHeadOptions

SMALL_HEAD = {**HEAD_32, "dropout": 0.0, "meta_fields": []}
IN_DIST = ("tta-0",)  # + clean: variants that look like training images
OOD = ("tta-1", "tta-2", "tta-3", "tta-4")  # far from the training features, label inverted


# ---- the weighting -----------------------------------------------------------------------------


def test_keep_count_rounds_and_keeps_at_least_one():
    assert [n_kept(t, 0.8) for t in (1, 2, 3, 5, 8, 9)] == [1, 2, 2, 4, 6, 7]
    assert n_kept(8, 0.01) == 1 and n_kept(8, 1.0) == 8


def test_weights_are_softmax_of_minus_distance_over_the_closest():
    d = np.array([[1.0, 2.0, 9.0, 3.0, 0.5]])
    w = foods_weights(d, keep=0.6)  # keeps 3 of 5: distances 0.5, 1, 2
    expected = np.exp(-np.array([1.0, 2.0, 0.5]))
    expected /= expected.sum()
    np.testing.assert_allclose(w[0, [0, 1, 4]], expected)
    assert w[0, 2] == 0 and w[0, 3] == 0
    np.testing.assert_allclose(foods_weights(d, keep=0.01)[0], [0, 0, 0, 0, 1])
    hot = foods_weights(d, keep=1.0, temperature=1e6)  # very high temperature: plain mean
    np.testing.assert_allclose(hot, uniform_weights(1, 5), atol=1e-5)
    np.testing.assert_allclose(
        weighted_probability(np.array([[0.2, 0.4]]), np.array([[0.75, 0.25]])), [0.25]
    )


def test_mahalanobis_matches_the_shrunk_covariance(tmp_path):
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([5, 1, 1, 1, 0.2, 0.2])
    stats = FoodsStats.fit(x)
    lw = LedoitWolf().fit(x)
    q = rng.normal(size=(3, 4, 6))
    diff = q - lw.location_
    manual = np.sqrt(np.einsum("...i,ij,...j->...", diff, np.linalg.inv(lw.covariance_), diff))
    np.testing.assert_allclose(stats.distances(q), manual, rtol=1e-6)
    np.testing.assert_allclose(stats.distances(q, "euclidean"), np.linalg.norm(diff, axis=-1))
    # a step along a low-variance axis is far; the same step along the wide one is near
    step = np.zeros((2, 6))
    step[0, 4] = step[1, 0] = 2.0
    d = stats.distances(step + lw.location_)
    assert d[0] > 5 * d[1]
    # round trip through safetensors
    stats.variants, stats.settings = ["clean", "tta-0"], FoodsSettings(keep=0.5)
    back = load_stats(save_stats(tmp_path / STATS_FILE, stats))
    np.testing.assert_array_equal(back.precision, stats.precision)
    assert back.variants == ["clean", "tta-0"] and back.settings.keep == 0.5


def test_settings_are_checked():
    for bad in (
        FoodsSettings(keep=0),
        FoodsSettings(keep=1.5),
        FoodsSettings(distance="l1"),
        FoodsSettings(temperature=0),
    ):
        with pytest.raises(UserError):
            bad.check()


def test_foods_down_weights_planted_ood_variants_and_beats_mean_tta():
    """Embeddings as a head would give them: training ones from N(0, S) with S anisotropic;
    per image 2 in-distribution variants with an informative probability and 4 variants
    shifted along a narrow axis of S with the probability inverted."""
    rng = np.random.default_rng(1)
    scale = np.array([4.0, 2.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    stats = FoodsStats.fit(rng.normal(size=(500, 8)) * scale)
    n, t = 300, 6
    y = rng.integers(0, 2, n)
    emb = rng.normal(size=(n, t, 8)) * scale
    ood = np.zeros((n, t), bool)
    for i in range(n):
        ood[i, rng.choice(t, 4, replace=False)] = True
    emb[ood, 4] += 3.0  # 10 standard deviations along a narrow axis, small in Euclidean terms
    signal = np.where(y[:, None] == 1, 1.5, -1.5) + rng.normal(0, 1.0, (n, t))
    signal[ood] *= -1
    probs = 1 / (1 + np.exp(-signal))

    w = foods_weights(stats.distances(emb), keep=0.8)
    assert w[ood].max() < 0.05 and w[~ood].sum() / n > 0.95
    foods = binary_metrics(y, weighted_probability(probs, w))
    mean = binary_metrics(y, probs.mean(axis=1))
    assert foods["mcc"] > 0.8 and mean["mcc"] < 0
    # Euclidean distance cannot see a shift along a narrow axis: FOODS needs Mahalanobis
    w_euc = foods_weights(stats.distances(emb, "euclidean"), keep=0.8)
    assert w_euc[ood].sum() > 10 * w[ood].sum()


# ---- the stage ---------------------------------------------------------------------------------


def planted_tta_cache(root, n=160, dim=16, signal=3.0, seed=0):
    """A finished cache whose label is planted on every view along a direction u, with
    variants: clean, tta-0 (clean + noise) and tta-1..4 out of distribution (an offset of 8
    along another direction w and the signal on the wrong class)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    u, w = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
    base = rng.normal(size=(n, 12, dim))
    clean = base + signal * y[:, None, None] * u
    variants = {"clean": clean, "tta-0": clean + rng.normal(0, 0.3, clean.shape)}
    for name in OOD:
        noise = rng.normal(0, 0.3, clean.shape)
        variants[name] = base + noise + signal * (1 - y)[:, None, None] * u + 8.0 * w
    split = ["test" if i < n // 4 else "train" for i in range(n)]
    cache = Cache.create(
        root,
        n_rows=n,
        n_views=12,
        feature_dim=dim,
        attrs={
            "backbone": {"preset": "planted", "random_init": False, "feature_dim": dim},
            "views": {"layout": "grid3x3-v1", "n_views": 12},
        },
        shard_rows=128,
        chunk_rows=16,
    )
    for name in variants:
        cache.ensure_variant(name)
    for shard in cache.shards():
        rows = [
            {
                "id": f"r{i}",
                "split": split[i],
                "label": int(y[i]),
                "vid_id": f"v{i // 2}",
                "weather": [],
                "description": "",
                "status": "ok",
            }
            for i in range(shard.start, shard.stop)
        ]
        for name, feats in variants.items():
            cache.write_features(name, shard, feats[shard.start : shard.stop])
        cache.write_text(shard, np.zeros((len(rows), 384)), np.zeros(len(rows), bool))
        cache.write_samples(shard, rows)
    cache.finalize()
    return root


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    cache = planted_tta_cache(root / "cache")
    run_train_head(
        TrainHeadOptions(
            cache=cache,
            out=root / "run",
            head=dict(SMALL_HEAD),
            variants=["clean"],
            train=TrainConfig(epochs=3, batch_size=32, lr=3e-3, patience=10, seed=0),
            device="cpu",
            progress=False,
        )
    )
    return root


def test_tta_stage_reports_foods_beside_mean_and_none(monkeypatch, planted_run, capsys):
    root = planted_run
    out = root / "preds" / "test.parquet"
    code = run_cli(
        monkeypatch,
        "tta",
        "--cache",
        root / "cache",
        "--model",
        root / "run",
        "--out",
        out,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0
    table = capsys.readouterr().out  # the summary table is a result: stdout
    assert "FOODS" in table and "mean-TTA" in table and "no TTA" in table
    report = json.loads(out.with_suffix(".metrics.json").read_text())
    metrics = {r["method"]: r for r in report["metrics"]}
    assert report["variants"] == ["clean", *IN_DIST, *OOD] and report["rows"] == 40
    assert report["fit"]["source"] == "the model's training rows"
    # the head learned the planted signal; the OOD variants, the majority, lie about it
    assert metrics["none"]["mcc"] > 0.8
    assert metrics["mean"]["mcc"] < 0.5
    assert metrics["foods"]["mcc"] > 0.8 and metrics["foods"]["mcc"] > metrics["mean"]["mcc"]
    by_variant = {v["variant"]: v for v in report["by_variant"]}
    assert all(by_variant[v]["mean_weight"] < 0.05 for v in OOD)
    assert all(
        by_variant[v]["mean_distance"] > 2 * by_variant["clean"]["mean_distance"] for v in OOD
    )

    table = pq.read_table(out).to_pydict()
    assert table["id"][:2] == ["r0", "r1"] and len(table["id"]) == 40
    assert set(table["label"]) <= {0, 1}
    weights = np.stack([table[f"weight_{v}"] for v in report["variants"]], axis=1)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert ((weights > 0).sum(axis=1) == 5).all()  # keep 0.8 of 6 candidates
    assert all(0 <= p <= 1 for p in table["probability"])
    stats = load_stats(root / "run" / STATS_FILE)
    assert stats.variants == report["variants"] and stats.settings.distance == "mahalanobis"


def test_tta_options_and_errors(monkeypatch, planted_run, capsys):
    root = planted_run
    out = root / "euc.parquet"
    code = run_cli(
        monkeypatch,
        "tta",
        "--cache",
        root / "cache",
        "--model",
        root / "run",
        "--out",
        out,
        "--distance",
        "euclidean",
        "--keep",
        "0.5",
        "--split",
        "all",
        "--variants",
        "clean,tta:2",
        "--no-save-stats",
        "--no-progress",
    )
    assert code == 0
    report = json.loads(out.with_suffix(".metrics.json").read_text())
    assert report["variants"] == ["clean", "tta-0", "tta-1"] and report["rows"] == 160
    assert report["settings"]["distance"] == "euclidean" and report["kept_per_image"] == 2
    assert report["stats"] is None
    capsys.readouterr()
    for args, words in (
        (("--keep", "0"), "--keep"),
        (("--distance", "cosine"), "unknown distance"),
        (("--split", "val"), "no ok rows in split 'val'"),
        (("--variants", "clean,tta:8"), "no variant 'tta-5'"),
    ):
        code = run_cli(
            monkeypatch,
            "tta",
            "--cache",
            root / "cache",
            "--model",
            root / "run",
            "--out",
            out,
            "--no-progress",
            *args,
        )
        err = capsys.readouterr().err
        assert code == 2 and words in err, err
        assert len(err.strip().splitlines()) == 1
