"""`roadwork ensemble` on planted-signal caches where the right answer is known.

Construction. Each positive row carries one of two planted signals, chosen at random: signal
A (``strength * u`` added to view 3) or signal B (``strength * v`` added to view 7); negatives
carry neither; every view is unit Gaussian noise besides. Variant ``clean`` (and a noisier
``natix-0``) holds both signals; ``aug-0`` only A (B rows look negative there), ``aug-1``
only B. Member "a" trains on aug-0 and member "b" on aug-1, so each can at best find half of
the positives (MCC about 0.58 on clean rows), while a combination that calls a row positive
when either member does can find them all. So the stack must beat the best member by a wide
margin (measured over several seeds: +0.17 to +0.27 OOF, +0.25 to +0.39 test).

The target cache has the same layout with a planted shift: its signal A points along
``0.3 u + 0.95 w`` (w orthogonal to u), so member "a" sees under a third of it and DoRA has
to learn the new direction (and may learn B) from the target's labelled rows.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import run_cli
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.forward import head_logits
from roadwork_cache.inference.bundles import load_bundle, load_head
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.stages.ensemble import run_ensemble
from roadwork_cache.training.distill import DistillConfig
from roadwork_cache.training.dora import DoraSettings, merge, with_dora
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.members import MemberSpec
from roadwork_cache.training.metrics import best_threshold, binary_metrics, subnet_reward
from roadwork_cache.training.plan import EnsembleOptions
from roadwork_cache.training.selection import Selection
from roadwork_cache.training.stacking import calibrate

pytestmark = pytest.mark.usefixtures("one_thread")  # small heads (conftest)

DIM = 16
SMALL_HEAD = {
    "dim": 32,
    "layers": 1,
    "heads": 2,
    "pyramid_dims": [32],
    "fusion_dim": 32,
    "classifier_dim": 16,
    "gate_dim": 8,
    "dropout": 0.0,
    "keep": None,
    "meta_fields": [],
}
MEMBERS = [
    {"name": "a", "seed": 1, "head": SMALL_HEAD, "variants": ["aug-0"]},
    {"name": "b", "seed": 2, "head": SMALL_HEAD, "variants": ["aug-1"]},
]


def signal_cache(
    root,
    n=600,
    seed=0,
    strength=12.0,
    a_dir=None,
    labelled=True,
    test_fraction=0.25,
    variants=("clean", "aug-0", "aug-1", "natix-0"),
):
    """A finished cache with the two planted signals (see the module docstring)."""
    from roadwork_cache.store.cache import Cache

    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(DIM, DIM)))[0]
    u, v, w = basis[:, 0], basis[:, 1], basis[:, 2]  # fixed across caches: same "backbone"
    direction = u if a_dir is None else a_dir[0] * u + a_dir[1] * w
    y = (rng.random(n) < 0.5).astype(int)
    half = rng.random(n) < 0.5  # which of the two signals a positive row carries
    a_rows, b_rows = (y == 1) & half, (y == 1) & ~half
    noise = rng.normal(size=(n, 12, DIM))
    clean, only_a, only_b = noise.copy(), noise.copy(), noise.copy()
    for arr, rows, view, vec in (
        (clean, a_rows, 3, direction),
        (clean, b_rows, 7, v),
        (only_a, a_rows, 3, direction),
        (only_b, b_rows, 7, v),
    ):
        arr[rows, view] += strength * vec
    natix = clean + rng.normal(scale=0.3, size=clean.shape)
    vids = [f"v{i // 3}" for i in range(n)]
    n_test = int(n / 3 * test_fraction)
    cache = Cache.create(
        root,
        n_rows=n,
        n_views=12,
        feature_dim=DIM,
        attrs={
            "backbone": {"preset": "planted", "random_init": False, "feature_dim": DIM},
            "views": {"layout": "grid3x3-v1", "n_views": 12},
        },
        shard_rows=n,
        chunk_rows=n,
    )
    arrays = {"clean": clean, "aug-0": only_a, "aug-1": only_b, "natix-0": natix}
    arrays = {name: arrays[name] for name in variants}
    for name in arrays:
        cache.ensure_variant(name)
    (shard,) = cache.shards()
    for name, feats in arrays.items():
        cache.write_features(name, shard, feats.astype(np.float32))
    cache.write_text(shard, np.zeros((n, 384), np.float32), np.zeros(n, bool))
    cache.write_samples(
        shard,
        [
            {
                "id": str(i),
                "split": "test" if i // 3 < n_test else "train",
                "label": int(y[i]) if labelled else None,
                "vid_id": vids[i],
                "gps_lat": 40.0 + rng.normal(0, 0.05),
                "gps_lon": -86.0 + rng.normal(0, 0.05),
                "city": None,
                "weather": [["Sunny"], ["Rainy"]][i % 2],
                "daytime": "Light",
                "scene": "Urban",
                "description": "",
                "status": "ok",
            }
            for i in range(n)
        ],
    )
    cache.finalize()
    return root


def options(cache, out, members_file, **over) -> EnsembleOptions:
    values = dict(
        cache=cache,
        out=out,
        members=str(members_file),
        folds=3,
        seed=0,
        train=TrainConfig(epochs=12, batch_size=32, lr=5e-3, patience=12, warmup_epochs=0.5),
        device="cpu",
        progress=False,
    )
    values.update(over)
    return EnsembleOptions(**values)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    # Fold models early-stop on rows held back from their own training folds (strictly
    # out-of-fold), so each learns from fewer rows: 900 of them keep the members sound.
    source = signal_cache(root / "source", seed=0, n=900)
    target = signal_cache(
        root / "target",
        seed=1,
        n=300,
        a_dir=(0.3, 0.95),
        test_fraction=0,
        variants=("clean", "natix-0"),
    )
    members = root / "members.json"
    members.write_text(json.dumps(MEMBERS))
    opts = options(
        source,
        root / "ens",
        members,
        target=str(target),
        train=TrainConfig(epochs=16, batch_size=32, lr=5e-3, patience=16, warmup_epochs=0.5),
        dora_folds=3,
        dora_member="a",
        distill=True,
        # a high rate: a few hundred rows and ten epochs (real runs use 1e-4)
        dora=DoraSettings(
            rank=8, alpha=16, lr=3e-2, epochs=10, patience=10, dropout=0.0, batch_size=16
        ),
        distill_cfg=DistillConfig(epochs=8, batch_size=64, lr=3e-3, patience=8),
    )
    return run_ensemble(opts), root


def pick(rows, model, set_name, variant="clean", metadata="none"):
    return next(
        r
        for r in rows
        if r["model"] == model
        and r["set"] == set_name
        and r["variant"] == variant
        and r["metadata"] == metadata
    )


def test_stacked_ensemble_beats_the_best_member(run):
    result, _ = run
    rows = result["metrics"]["rows"]
    for set_name in ("oof", "test"):
        best_member = max(pick(rows, m, set_name)["mcc"] for m in ("a", "b"))
        stacked = pick(rows, "stacked", set_name)["mcc"]
        assert stacked > best_member + 0.1, (set_name, stacked, best_member)
    # every member, every combination, clean and natix, with and without metadata
    for model in ("a", "b", "mean", "weighted", "stacked"):
        for variant in ("clean", "natix-0", "natix"):
            for meta in ("none", "all"):
                r = pick(rows, model, "test", variant, meta)
                assert r["reward"] == pytest.approx(subnet_reward(r["mcc"], r["accuracy"]))
    # the validator's windows, simulated: every model on every set, and the deployed bundle
    rewards = result["metrics"]["expected_rewards"]
    for model in ("a", "b", "mean", "stacked", "deployed"):
        reward = rewards[model]["test"]
        assert 0 <= reward["p5"] <= reward["mean"] <= 1 and reward["windows"] >= 1000


def test_dora_folds_beat_the_unadapted_member_on_held_out_target_rows(run):
    result, _ = run
    rows = result["metrics"]["rows"]
    plain = pick(rows, "a", "target")["mcc"]
    adapted = pick(rows, "dora", "target")["mcc"]
    assert adapted > plain + 0.15, (adapted, plain)
    dora = result["metrics"]["dora"]
    assert dora["member"] == "a" and len(dora["folds"]) == 3
    assert dora["max_merge_error"] < 1e-4


def test_folded_threshold_makes_one_half_optimal_on_the_calibration_rows(run):
    result, root = run
    manifest = result["manifest"]
    assert 0 < manifest["threshold"] < 1 and manifest["temperature"] > 0
    # The threshold is tuned in the selection setting: the natix variants pooled (levels
    # equal), metadata NULL, labels balanced; after folding, 0.5 is the best cut there.
    if manifest["calibration_rows"] == "oof":
        table = pq.read_table(root / "ens" / "predictions.parquet").to_pydict()
        variants = [c[len("calibration_") :] for c in table if c.startswith("calibration_")]
        keep = ~np.isnan(np.array(table[f"calibration_{variants[0]}"], dtype=float))
        labels = np.array(table["label"], dtype=object)[keep].astype(int)
        probs = [np.array(table[f"calibration_{v}"], dtype=float)[keep] for v in variants]
    else:  # calibrated on the target's cross-fitted rows
        table = pq.read_table(root / "ens" / "target_predictions.parquet").to_pydict()
        method = manifest["method"]
        variants = [c[len(f"{method}+dora_") :] for c in table if c.startswith(f"{method}+dora_")]
        labels = np.array(table["label"])
        from roadwork_cache.heads.combine import Calibration

        cal = Calibration(manifest["temperature"], manifest["threshold"])
        probs = [cal.folded(np.array(table[f"{method}+dora_{v}"])) for v in variants]
    y, p, w = Selection.for_variants(variants).pool(labels, probs)
    assert best_threshold(y, p, w) == 0.5
    assert best_threshold(y, p) == 0.5
    rng = np.random.default_rng(0)
    z = rng.normal(size=500) + 1.0
    y = (rng.random(500) < 0.3 + 0.4 * (z > 1.5)).astype(int)
    cal = calibrate(z, y)
    folded = cal.folded(z)
    assert best_threshold(y, folded) == 0.5
    assert binary_metrics(y, folded, 0.5)["mcc"] == pytest.approx(
        binary_metrics(y, cal.prob(z), cal.threshold)["mcc"]
    )


def test_manifest_round_trip_gives_the_stage_predictions(run):
    result, root = run
    out = root / "ens"
    bundle = load_bundle(out)
    from roadwork_cache.store.cache import Cache

    feats = Cache.open(root / "source").features("clean").astype(np.float32)
    table = pq.read_table(out / "predictions.parquet").to_pydict()
    np.testing.assert_allclose(bundle.predict(feats), table["deployed"], atol=1e-6)
    assert bundle.embed(feats[:5]).shape == (5, SMALL_HEAD["dim"])
    assert bundle.config["threshold"] == result["manifest"]["threshold"]
    # every member fold is a train-head layout that load_head reads; DoRA and student too
    for entry in json.loads((out / "manifest.json").read_text())["members"]:
        for rel in entry["folders"]:
            load_head(out / rel)
    for j in (1, 2, 3):
        load_head(out / "dora" / f"fold-{j}")
    student = load_bundle(out / "student")
    assert student.predict(feats[:4]).shape == (4,)
    assert result["metrics"]["student"]["speedup"] > 0
    meta_learner = json.loads((out / "meta_learner.json").read_text())
    assert len(meta_learner["all_methods"]["stacked"]["weights"]) == 2
    assert (out / "table.txt").read_text().count("stacked") >= 2


def test_members_of_another_cache_in_the_output_folder_are_refused(run):
    _, root = run
    other = signal_cache(root / "other", seed=5)
    with pytest.raises(UserError, match="was trained on cache .*use a new --out"):
        # --overwrite: a finished ensemble is refused without it (tests/test_cli.py)
        run_ensemble(options(other, root / "ens", root / "members.json", overwrite=True))


def test_merged_dora_weights_give_the_adapter_outputs():
    torch.manual_seed(0)
    cfg = HeadConfig.from_dict({"in_dim": DIM, **SMALL_HEAD})
    base = RoadworkHead(cfg).eval()
    adapted = with_dora(base, DoraSettings(rank=4, alpha=8, dropout=0.0))
    names = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    assert any("gate_proj" in n for n in names) and any("q_proj" in n for n in names)
    with torch.no_grad():  # an adapter that does something (B starts at zero)
        for n, p in adapted.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    x = np.random.default_rng(0).normal(size=(20, 12, DIM)).astype(np.float32)
    before = head_logits(adapted, x, None, torch.device("cpu"))
    plain = head_logits(base, x, None, torch.device("cpu"))
    merged = merge(adapted)
    after = head_logits(merged, x, None, torch.device("cpu"))
    assert np.abs(before - plain).max() > 1e-3  # the adapter changed the outputs
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert set(merged.state_dict()) == set(base.state_dict())  # a plain head again


def test_member_file_with_unknown_keys_is_one_sentence(monkeypatch, capsys, tmp_path):
    members = tmp_path / "members.yaml"
    members.write_text("- name: a\n  seed: 1\n  heads: 4\n")
    code = run_cli(
        monkeypatch,
        "ensemble",
        "--cache",
        tmp_path / "missing",
        "--out",
        tmp_path / "out",
        "--members",
        members,
        "--no-progress",
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "member 'a'" in err[0] and "unknown key(s) heads" in err[0]
    with pytest.raises(UserError, match=r"unknown key\(s\) head.widht"):
        MemberSpec.from_dict({"name": "x", "head": {"widht": 3}})


def test_target_without_labels_for_dora_is_refused(tmp_path):
    source = signal_cache(tmp_path / "source", n=120)
    target = signal_cache(tmp_path / "target", n=60, seed=3, labelled=False)
    members = tmp_path / "members.json"
    members.write_text(json.dumps(MEMBERS[:1]))
    with pytest.raises(UserError, match="has no labels; DoRA folds need labelled"):
        run_ensemble(options(source, tmp_path / "out", members, target=str(target), dora_folds=3))
    assert not (tmp_path / "out" / "members").exists()  # refused before any training


def test_fold_jobs_in_worker_processes_give_what_one_process_gives(one_thread, tmp_path):
    """`--jobs 2` trains the fold jobs in two spawned workers (one thread each, as here):
    the same members' logits and predictions as in this process."""
    source = signal_cache(tmp_path / "source", n=240)
    members = tmp_path / "members.json"
    members.write_text(json.dumps(MEMBERS))
    train = TrainConfig(epochs=2, batch_size=32, lr=5e-3, patience=2, warmup_epochs=0.5)
    outs = {}
    for jobs in (1, 2):
        run_ensemble(options(source, tmp_path / f"jobs{jobs}", members, train=train, jobs=jobs))
        outs[jobs] = pq.read_table(tmp_path / f"jobs{jobs}" / "predictions.parquet")
    one, two = outs[1], outs[2]
    assert one.column_names == two.column_names and one.num_rows == 240
    numeric = [c for c in one.column_names if pa.types.is_floating(one.schema.field(c).type)]
    assert len(numeric) > 4
    for name in numeric:
        a, b = (t.column(name).to_numpy(zero_copy_only=False) for t in (one, two))
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=name)
