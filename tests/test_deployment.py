"""Judged as deployed (docs/design.md §1, §7): choices made in the selection setting, the
validator's reward simulated, metrics weighted as the validator draws its challenges."""

import math

import numpy as np
import pytest

from helpers import HEAD_64, planted_cache
from roadwork_cache.heads.combine import fold_threshold
from roadwork_cache.inference.run_folder import prob_column, read_run
from roadwork_cache.stages.train_head import run_train_head
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.metrics import balanced_weights, best_threshold, binary_metrics
from roadwork_cache.training.prepare import TrainHeadOptions
from roadwork_cache.training.reward import ACC_WINDOW, expected_reward, simulate_rewards
from roadwork_cache.training.selection import Selection

HEAD = HEAD_64

# ---- cuts and weights --------------------------------------------------------------------------


def test_best_threshold_never_returns_a_cut_fold_threshold_rejects():
    # Every score of the positives is 0 and of the negatives 1: no cut in (0, 1) helps, and
    # the old search returned 1.0, which the fold cannot take.
    t = best_threshold([1, 0, 1, 0], [0.0, 1.0, 0.0, 1.0])
    assert 0.0 < t < 1.0
    fold_threshold([0.0, 1.0], t)  # no error
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        y = rng.integers(0, 2, n)
        p = rng.choice([0.0, 1.0, 0.3, 0.7], n)
        t = best_threshold(y, p)
        assert 0.0 < t < 1.0, (y, p, t)


def test_weighted_metrics_equal_repeated_rows():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    p = rng.random(40)
    w = rng.integers(1, 4, 40)
    repeated = binary_metrics(np.repeat(y, w), np.repeat(p, w), 0.4)
    weighted = binary_metrics(y, p, 0.4, weight=w.astype(float))
    for key in ("mcc", "accuracy", "precision", "recall", "f1", "auc", "reward"):
        assert weighted[key] == pytest.approx(repeated[key]), key
    assert best_threshold(y, p, w) == best_threshold(np.repeat(y, w), np.repeat(p, w))


def test_balanced_weights_make_the_classes_weigh_the_same():
    y = np.array([1] * 8 + [0] * 2)
    w = balanced_weights(y)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum()) and w.mean() == pytest.approx(1.0)
    # a model that answers "roadwork" to everything is at chance once the classes are balanced
    assert binary_metrics(y, np.ones(10), weight=w)["accuracy"] == pytest.approx(0.5)


def test_selection_weighs_each_natix_level_the_same():
    s = Selection.for_variants(["clean", "natix-0", "natix-1", "natix-4", "aug-0", "natix-1+tta-0"])
    assert s.variants == ("natix-0", "natix-1", "natix-4") and not s.fallback
    # levels 0 (natix-0 and natix-4) and 1 (natix-1) each weigh one half
    assert s.weights == pytest.approx((0.25, 0.5, 0.25))
    assert Selection.for_variants(["clean", "aug-0"]).fallback


def test_the_selection_scores_at_its_best_cut_with_levels_and_labels_weighed():
    """Early stopping's score: the MCC at the cut no other cut beats, in the pooled setting
    (level 1 weighs as much as levels 0 twice; the rare label as much as the common one)."""
    rng = np.random.default_rng(3)
    s = Selection.for_variants(["natix-0", "natix-4", "natix-1"])
    y = (rng.random(300) < 0.2).astype(np.int64)  # labels 1:4
    probs = [np.clip(0.3 * y + rng.random(300) * (0.6 + 0.2 * k), 0, 1) for k in range(3)]
    metrics, cut = s.at_best_cut(y, probs)
    assert metrics == s.metrics(y, probs, cut)
    others = [s.metrics(y, probs, t)["mcc"] for t in np.linspace(0.01, 0.99, 99)]
    assert metrics["mcc"] >= max(others) - 1e-12
    # Unweighted pooling would choose on other rows: the weights must reach the score.
    y_all = np.concatenate([y] * 3)
    p_all = np.concatenate(probs)
    plain = binary_metrics(y_all, p_all, best_threshold(y_all, p_all))["mcc"]
    assert not math.isclose(plain, metrics["mcc"], rel_tol=1e-6)


# ---- the folded cut is the natix one ---------------------------------------------------------


def natix_shifted_cache(root, keep=0.35, n=600, dim=32, seed=0, signal=5.0):
    """planted_cache plus natix-0..3: the clean features with the planted roadwork cue
    weakened to `keep` of its strength (a challenge blurs and crops the cones), so a head
    trained on clean scores the challenges' positives lower and wants a lower cut there."""
    cache, planted, labels = planted_cache(root, n=n, dim=dim, seed=seed, signal=signal)
    store = Cache.open(cache, mode="a")
    clean = store.features("clean").astype(np.float32)
    rng = np.random.default_rng(seed)
    positives = clean[labels == 1][planted[labels == 1]]
    u = positives.mean(0) / np.linalg.norm(positives.mean(0))  # the planted direction
    for k in range(4):
        name = f"natix-{k}"
        store.ensure_variant(name)
        feats = (
            clean - (1 - keep) * signal * planted[:, :, None] * u + rng.normal(0, 0.2, clean.shape)
        )
        for shard in store.shards():
            store.write_features(name, shard, feats[shard.start : shard.stop])
    store.finalize()
    return cache


@pytest.fixture(scope="module")
def natix_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("natix")
    cache = natix_shifted_cache(root / "cache")
    opts = TrainHeadOptions(
        cache=cache,
        out=root / "run",
        head=dict(HEAD),
        variants=["clean"],  # trained on clean: the weakened cue scores lower on natix
        train=TrainConfig(epochs=20, batch_size=64, lr=2e-3, patience=20, seed=0),
        device="cpu",
        progress=False,
    )
    return run_train_head(opts), root


def test_the_folded_threshold_is_the_best_cut_on_natix_rows(natix_run):
    _, root = natix_run
    run = read_run(root / "run")
    preds = run.predictions
    val = [i for i, s in enumerate(preds["set"]) if s == "val"]
    y = np.array([preds["label"][i] for i in val])
    natix = [
        np.array([preds[prob_column("head", f"natix-{k}", "none")][i] for i in val])
        for k in range(4)
    ]
    clean = np.array([preds[prob_column("head", "clean", "none")][i] for i in val])
    setting = Selection.for_variants([f"natix-{k}" for k in range(4)])
    clean_cut = best_threshold(y, clean, balanced_weights(y))
    natix_cut = setting.threshold(y, natix)
    assert abs(clean_cut - natix_cut) > 0.05  # the two settings disagree: the test can fail
    assert run.threshold == pytest.approx(natix_cut)  # the record's cut is the natix one
    folded = [fold_threshold(p, run.threshold) for p in natix]
    at_half = setting.metrics(y, folded, 0.5)["mcc"]
    best = setting.metrics(y, natix, natix_cut)["mcc"]
    assert at_half == pytest.approx(best, abs=0.01)
    # cut where clean says, the challenges would score worse
    assert setting.metrics(y, natix, clean_cut)["mcc"] < best - 0.01


# ---- the validator's reward --------------------------------------------------------------------


def test_a_perfect_model_earns_reward_one_in_every_window():
    y = np.array([0, 1] * 50)
    rewards = simulate_rewards(y, [y.astype(float)] * 2, [0, 1], windows=300)
    assert rewards.shape == (300,) and np.all(rewards == 1.0)


def test_a_constant_answer_earns_the_reward_of_chance():
    # "Roadwork" to everything: MCC 0, accuracy = the share of positives among the last 10
    # answers, whose count is Binomial(10, 1/2) since labels are drawn 50/50.
    y = np.array([0] * 90 + [1] * 10)  # the data's own balance must not matter
    rewards = simulate_rewards(y, [np.ones(100)], [0], windows=20000, seed=3)
    k = np.arange(ACC_WINDOW + 1)
    pmf = np.array([math.comb(ACC_WINDOW, i) for i in k]) / 2**ACC_WINDOW
    expected = float((pmf * (0.5 * k / ACC_WINDOW) ** 3).sum())
    assert rewards.mean() == pytest.approx(expected, rel=0.03)


def test_expected_reward_draws_natix_levels_uniformly():
    y = np.array([0, 1] * 100)
    good, bad = y.astype(float), 1.0 - y  # level 0 answers right, level 1 wrong
    both = expected_reward(y, {"natix-0": good, "natix-1": bad})
    only_good = expected_reward(y, {"natix-0": good, "natix-4": good})
    assert only_good["mean"] == pytest.approx(1.0) and both["windows"] >= 1000
    # half the challenges are answered wrong: MCC 0, accuracy about 0.5
    assert both["mean"] < 0.1 and both["p5"] <= both["mean"]
    assert expected_reward(np.ones(10), {"clean": np.ones(10)})["mean"] is None


# ---- metadata: deployment sends none ---------------------------------------------------------


def val_mcc_without_metadata(root, name, leaky, **head) -> float:
    """Train a head on a cache where daytime is the label; its validation MCC with every
    metadata field NULL (the selection setting), at its folded cut."""
    cache = root / "cache"
    if not cache.exists():
        planted_cache(cache, signal=3.0, leaky_daytime=True)  # a weak vision cue
    result = run_train_head(
        TrainHeadOptions(
            cache=cache,
            out=root / name,
            head={**HEAD, **head},
            allow_leaky=leaky,
            train=TrainConfig(epochs=15, batch_size=64, lr=2e-3, patience=15, seed=0),
            device="cpu",
            progress=False,
        )
    )
    row = next(
        r
        for r in result["metrics"]["rows"]
        if (r["model"], r["set"], r["variant"], r["metadata"], r["threshold_kind"])
        == ("head", "val", "clean", "none", "tuned")
    )
    return row["mcc"]


def test_whole_record_dropout_keeps_the_head_working_without_metadata(tmp_path):
    # daytime carries the label in training and is absent at validation (no metadata)
    without = val_mcc_without_metadata(tmp_path, "none", False, meta_fields=[])
    with_record_dropout = val_mcc_without_metadata(tmp_path, "record", True)
    only_fields = val_mcc_without_metadata(
        tmp_path, "fields", True, record_dropout=0.0, field_dropout=0.0
    )
    assert with_record_dropout == pytest.approx(without, abs=0.05)
    # the test can fail: a head that always sees the leaky field leans on it
    assert only_fields < without - 0.1, (only_fields, without)


# ---- the tables carry the linear probes --------------------------------------------------------


def test_every_table_carries_both_probes_and_the_tile_probe_sees_the_tiles(natix_run):
    result, _ = natix_run
    rows = result["metrics"]["rows"]

    def mcc(model):
        return next(
            r["mcc"]
            for r in rows
            if (r["model"], r["set"], r["variant"], r["metadata"], r["threshold_kind"])
            == (model, "test", "clean", "none", "tuned")
        )

    # the planted signal is in the tiles: 12 views see it, the global view does not
    assert mcc("probe") > mcc("baseline") + 0.3
    lead = result["metrics"]["headline"]
    assert set(lead) == {"head", "probe", "baseline"}
    assert lead["head"]["variant"] == "natix" and lead["head"]["set"] == "test"
    assert result["metrics"]["expected_reward"] == lead["head"]["expected_reward"]


# ---- split names -------------------------------------------------------------------------------


def test_split_names_are_normalised_when_read(tmp_path):
    from helpers import natix_row, write_shard
    from roadwork_cache.readers.sources import open_source

    names = ["Test", "TRAINING", "Validation", "holdout", None, "dev"]
    rows = [natix_row(i, split=name) for i, name in enumerate(names)]
    write_shard(tmp_path / "data.parquet", rows)
    got = [s.split for s in open_source(str(tmp_path / "data.parquet")).iter_samples()]
    assert got == ["test", "train", "val", "holdout", None, "val"]


# ---- TTA of challenges -------------------------------------------------------------------------


def test_a_cached_challenge_tta_feature_is_what_predict_computes_from_that_challenge(tmp_path):
    """natix-L+tta-K in the cache = predict's TTA path on the 224 px JPEG of natix-L. The
    source image is large, so a challenge rendered from the draft decode would differ; the
    backbone's layer scales are 1, so its features depend on the image."""
    import io

    import torch
    from PIL import Image, ImageDraw

    from helpers import natix_row, run_cli, write_shard
    from roadwork_cache.backbone.loading import load_backbone
    from roadwork_cache.readers.images import MAX_PIXELS, decode_image
    from roadwork_cache.views.batching import draft_side, image_views
    from roadwork_cache.views.challenge import challenge_jpeg, natix_params
    from roadwork_cache.views.variants import rng_for

    # 2 px stripes and small discs: a 1/8 draft decode blurs them away
    big = Image.new("RGB", (2400, 1800), (128, 128, 128))
    draw = ImageDraw.Draw(big)
    rng = np.random.default_rng(0)
    for x in range(0, 2400, 6):
        draw.line([(x, 0), (x, 1800)], fill=(255, 255, 255) if (x // 6) % 2 else (0, 0, 0), width=2)
    for _ in range(200):
        x, y = rng.integers(0, 2400), rng.integers(0, 1800)
        draw.ellipse([x, y, x + 40, y + 40], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    write_shard(
        tmp_path / "train-00000-of-00001.parquet",
        [
            natix_row(
                i, image={"bytes": buf.getvalue(), "path": f"{i}.jpg"}, width=2400, height=1800
            )
            for i in range(2)
        ],
    )
    cache = tmp_path / "cache"
    code = run_cli(
        pytest.MonkeyPatch(),
        "extract",
        str(tmp_path),
        "--cache",
        str(cache),
        "--view-size",
        "64",
        "--variants",
        "natix:2,natix:2+tta:2",
        "--no-text",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0
    store = Cache.open(cache)
    backbone = load_backbone("tiny", view_size=64)
    for row, sample_id in enumerate(("0", "1")):
        full = decode_image(buf.getvalue())
        for level, k in ((1, 0), (1, 1), (0, 1)):
            params = natix_params(level, *full.size, rng_for(sample_id, f"natix-{level}"))
            received = decode_image(challenge_jpeg(full, params), MAX_PIXELS, draft_side(64))
            views = torch.from_numpy(image_views(received, ("clean", f"tta-{k}"), 64))
            feats = backbone(views.reshape(-1, 64, 64, 3)).half().float().view(2, 12, -1)
            cached = store.features(f"natix-{level}+tta-{k}")[row].astype(np.float32)
            np.testing.assert_allclose(feats[1].numpy(), cached, atol=2e-3, rtol=2e-3)
            plain = store.features(f"natix-{level}")[row].astype(np.float32)
            np.testing.assert_allclose(feats[0].numpy(), plain, atol=2e-3, rtol=2e-3)


def test_challenges_and_tta_are_rendered_from_the_full_resolution_decode():
    import io

    from PIL import Image, ImageDraw

    from roadwork_cache.readers.images import decode_image
    from roadwork_cache.readers.schema import Sample
    from roadwork_cache.views.batching import ViewDataset, image_views
    from roadwork_cache.views.variants import apply_variant

    big = Image.new("RGB", (2400, 1800), (128, 128, 128))
    draw = ImageDraw.Draw(big)
    rng = np.random.default_rng(0)
    for _ in range(300):
        x, y = rng.integers(0, 2400), rng.integers(0, 1800)
        draw.ellipse([x, y, x + 30, y + 30], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    sample = Sample(id="7", image_bytes=buf.getvalue(), source="test")
    views = ViewDataset([sample], 64, ["natix-1", "natix-1+tta-2", "tta-3", "clean"])
    full = decode_image(buf.getvalue())
    draft = decode_image(buf.getvalue(), draft_side=views.draft_side)
    assert draft.size[0] < full.size[0] / 4  # the draft decode is much smaller here
    for i, name in enumerate(views.variants):
        got = views[i].views
        source = draft if name == "clean" else full  # clean keeps the cheap draft decode
        want = image_views(apply_variant(source, name, "7"), ("clean",), 64)[0]
        np.testing.assert_array_equal(got, want, err_msg=name)
        if name.startswith("natix"):  # a challenge rendered from the draft would differ
            other = image_views(apply_variant(draft, name, "7"), ("clean",), 64)[0]
            assert np.abs(got.astype(int) - other.astype(int)).mean() > 1.0, name


# ---- ensembles: what is scored is what is saved ------------------------------------------------


@pytest.fixture(scope="module")
def small_ensemble_cache(tmp_path_factory):
    import json

    import torch
    from test_ensemble import MEMBERS, signal_cache

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("small-ensemble")
    cache = signal_cache(root / "cache", seed=3, n=360)
    (root / "members.json").write_text(json.dumps(MEMBERS))
    return root, cache


def ensemble_options(root, cache, **over):
    from test_ensemble import options

    values = {"train": TrainConfig(epochs=3, batch_size=32, lr=5e-3, patience=3)}
    values.update(over)
    return options(cache, root / "ens", root / "members.json", folds=2, overwrite=True, **values)


def test_dora_needs_a_target_named(small_ensemble_cache):
    from roadwork_cache.runtime.errors import UserError
    from roadwork_cache.stages.ensemble import run_ensemble

    root, cache = small_ensemble_cache
    with pytest.raises(UserError, match="--dora-folds needs a labelled target: --target test"):
        run_ensemble(ensemble_options(root, cache, dora_folds=2))


@pytest.mark.parametrize(
    ("combine", "dora"),
    [("mean", False), ("weighted", False), ("stacked", False), ("stacked", True)],
)
def test_the_deployed_rows_are_the_saved_bundles_own_predictions(
    small_ensemble_cache, combine, dora
):
    from roadwork_cache.inference.bundles import load_bundle
    from roadwork_cache.stages.ensemble import run_ensemble
    from roadwork_cache.training.dora import DoraSettings

    root, cache = small_ensemble_cache
    extra = (
        {
            "dora_folds": 2,
            "target": "test",
            "dora": DoraSettings(
                rank=4, alpha=8, lr=3e-2, epochs=2, patience=2, dropout=0.0, batch_size=16
            ),
        }
        if dora
        else {}
    )
    result = run_ensemble(ensemble_options(root, cache, combine=combine, **extra))
    metrics = result["metrics"]
    assert metrics["bundle_max_diff"] < 1e-4 and metrics["method"] == combine
    bundle = load_bundle(root / "ens")
    store = Cache.open(cache)
    samples = store.samples().to_pydict()
    test = np.array([s == "test" for s in samples["split"]])
    y = np.array(samples["label"])[test]
    # a bag adapted on the test rows saw their labels: its rows say so
    adapted = metrics["deployed"] == "ensemble+dora"
    test_set = "test (in-sample)" if adapted else "test"
    assert metrics["headline_in_sample"] is adapted
    assert metrics["headline"] is None or metrics["headline"]["set"] == test_set
    for variant in ("clean", "natix"):
        names = ["clean"] if variant == "clean" else ["natix-0"]
        probs = [bundle.predict(store.features(v).astype(np.float32)[test]) for v in names]
        want = (
            Selection.for_variants(names)
            if variant == "natix"
            else Selection(("clean",), (1.0,), fallback=True)
        )
        expected = want.metrics(y, probs, 0.5)
        row = next(
            r
            for r in metrics["rows"]
            if (r["model"], r["set"], r["variant"], r["metadata"])
            == ("deployed", test_set, variant, "none")
        )
        assert row["mcc"] == pytest.approx(expected["mcc"], abs=1e-9)
        assert row["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    seen = result["manifest"]["seen"]
    assert (
        "test" in seen["splits"]
        if metrics["deployed"] == "ensemble+dora"
        else ("test" not in seen["splits"])
    )


def test_a_bundle_that_disagrees_writes_everything_then_says_so(small_ensemble_cache, monkeypatch):
    from roadwork_cache.inference import bundles
    from roadwork_cache.stages.ensemble import BundleMismatch, run_ensemble

    root, cache = small_ensemble_cache
    real = bundles.EnsembleBundle.predict
    monkeypatch.setattr(
        bundles.EnsembleBundle,
        "predict",
        lambda self, f, meta=None: np.clip(real(self, f, meta) + 0.01, 0, 1),
    )
    with pytest.raises(BundleMismatch, match="does not reproduce the stage's own predictions"):
        run_ensemble(ensemble_options(root, cache))
    for name in ("manifest.json", "metrics.json", "predictions.parquet", "table.txt"):
        assert (root / "ens" / name).is_file(), name


def test_tta_on_rows_the_model_saw_is_titled_in_sample(tmp_path):
    from rich.console import Console
    from test_tta import SMALL_HEAD as TTA_HEAD
    from test_tta import planted_tta_cache

    from roadwork_cache.stages.tta import TtaOptions, run_tta

    cache = planted_tta_cache(tmp_path / "cache")
    run_train_head(
        TrainHeadOptions(
            cache=cache,
            out=tmp_path / "run",
            head=dict(TTA_HEAD),
            variants=["clean"],
            train=TrainConfig(epochs=2, batch_size=32, seed=0),
            device="cpu",
            progress=False,
        )
    )

    def title(split):
        result = run_tta(
            TtaOptions(
                cache=cache,
                model=tmp_path / "run",
                out=tmp_path / f"{split}.parquet",
                split=split,
                save_stats=False,
                device="cpu",
                progress=False,
            )
        )
        console = Console(width=200, record=True)
        console.print(result["table"])
        return result["metrics"]["in_sample"], console.export_text()

    in_sample, text = title("train")  # the head trained on these labels
    assert in_sample and "in-sample" in text
    in_sample, text = title("test")
    assert not in_sample and "in-sample" not in text


def test_seen_splits_counts_the_target_a_model_was_adapted_to(tmp_path):
    """A bag adapted on a separate target cache saw that cache's labelled rows: scoring
    it there is in-sample, as scoring the members on their own pool is."""
    from roadwork_cache.inference.head_folder import seen_record, seen_splits

    own, target = tmp_path / "own", tmp_path / "target"
    seen = seen_record(
        str(own), ["train", "val"], {"cache": str(target), "rows": 5, "splits": ["test"]}
    )
    assert seen_splits(seen, own) == {"train", "val"}
    assert seen_splits(seen, target) == {"test"}
    assert seen_splits(seen, tmp_path / "other") == set()
    assert seen_splits(seen_record(str(own), ["train"]), target) == set()
