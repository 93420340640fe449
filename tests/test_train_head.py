"""`roadwork train-head` on features with a planted signal, where the right answer is known."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from helpers import HEAD_64, planted_cache, run_cli
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.stages.train_head import run_train_head
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.metrics import balanced_weights, best_threshold
from roadwork_cache.training.prepare import TrainHeadOptions

SMALL_HEAD = HEAD_64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    # daytime leaks the label too: a field the head reads by default, which must be dropped
    cache, planted, labels = planted_cache(root / "cache", signal=5.0, leaky_daytime=True)
    opts = TrainHeadOptions(
        cache=cache,
        out=root / "run",
        head=dict(SMALL_HEAD),
        train=TrainConfig(epochs=20, batch_size=64, lr=2e-3, patience=20, seed=0, warmup_epochs=1),
        device="cpu",
        progress=False,
    )
    result = run_train_head(opts)
    return result, planted, labels, root


def row(rows, model, set_name="test", metadata="none", threshold="tuned"):
    return next(
        r
        for r in rows
        if r["model"] == model
        and r["set"] == set_name
        and r["variant"] == "clean"
        and r["metadata"] == metadata
        and r["threshold_kind"] == threshold
    )


def test_head_finds_a_signal_in_the_tiles_and_beats_the_global_view_baseline(trained):
    result, *_ = trained
    rows = result["metrics"]["rows"]
    head = row(rows, "head")
    baseline = row(rows, "baseline")
    assert head["mcc"] > 0.75, head
    assert baseline["mcc"] < 0.3, baseline  # the global view holds no signal
    assert head["mcc"] - baseline["mcc"] > 0.5


def test_head_works_with_every_metadata_field_null(trained):
    result, *_ = trained
    rows = result["metrics"]["rows"]
    assert row(rows, "head", metadata="none")["auc"] > 0.9
    assert row(rows, "head", metadata="none", threshold="0.5")["accuracy"] > 0.85


def test_leaky_text_field_is_flagged_and_dropped(trained):
    result, _, _, root = trained
    audit = {a["field"]: a for a in json.loads((root / "run" / "audit.json").read_text())}
    assert audit["text"]["leaky"] and audit["text"]["mcc_present"] > 0.9
    assert not audit["weather"]["leaky"]
    assert audit["daytime"]["leaky"] is True  # leaky daytime: flagged...
    config = json.loads((root / "run" / "config.json").read_text())
    assert "text" not in config["head"]["meta_fields"]
    assert "text" in config["leaky_fields"]
    # ...and dropped from the head's inputs, though the head reads daytime by default
    assert "daytime" in HeadConfig(in_dim=8).meta_fields
    assert "daytime" not in config["head"]["meta_fields"] and "daytime" in config["leaky_fields"]


def test_pruning_keeps_the_planted_views(trained):
    _, planted, labels, root = trained
    config = json.loads((root / "run" / "config.json").read_text())
    model = RoadworkHead(HeadConfig.from_dict(config["head"]))
    model.load_state_dict(load_file(root / "run" / "model.safetensors"))
    model.eval()
    from roadwork_cache.store.cache import Cache

    feats = torch.from_numpy(Cache.open(root / "cache").features().astype(np.float32))
    pos = np.flatnonzero(labels)
    with torch.no_grad():
        out = model(feats[pos])
    kept = out.view_index.numpy()
    hits = [planted[i][kept[j]].sum() == planted[i].sum() for j, i in enumerate(pos)]
    assert np.mean(hits) > 0.9  # every planted tile of a positive survives pruning


def test_run_folder_is_complete_and_predictions_cover_every_row(trained):
    _, _, labels, root = trained
    run = root / "run"
    for name in (
        "config.json",
        "model.safetensors",
        "metrics.json",
        "predictions.parquet",
        "curve.png",
        "audit.json",
    ):
        assert (run / name).is_file(), name
    preds = pq.read_table(run / "predictions.parquet").to_pydict()
    assert len(preds["id"]) == len(labels)
    assert set(preds["set"]) == {"train", "val", "test"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert 1 <= metrics["best_epoch"] <= 25 and len(metrics["history"]) >= metrics["best_epoch"]
    # the threshold folded into later predictions is the MCC-best one on validation, in the
    # selection setting (this cache has no natix: clean, no metadata, labels 50/50)
    val = [i for i, s in enumerate(preds["set"]) if s == "val"]
    y = np.array([preds["label"][i] for i in val])
    p = np.array([preds["head_clean_none"][i] for i in val])
    threshold = json.loads((run / "config.json").read_text())["threshold"]
    assert threshold == pytest.approx(best_threshold(y, p, balanced_weights(y)))
    assert metrics["selection"]["fallback"] is True


def test_training_is_deterministic_on_cpu(tmp_path):
    cache, _, _ = planted_cache(tmp_path / "cache", n=120)
    outs = []
    for name in ("a", "b"):
        opts = TrainHeadOptions(
            cache=cache,
            out=tmp_path / name,
            head=dict(SMALL_HEAD),
            train=TrainConfig(epochs=2, batch_size=32, seed=3),
            device="cpu",
            progress=False,
        )
        run_train_head(opts)
        outs.append(load_file(tmp_path / name / "model.safetensors"))
    for key in outs[0]:
        assert torch.equal(outs[0][key], outs[1][key]), key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--meta-fields", "gps,colour"), "unknown meta_fields"),
        (("--variants", "aug-9"), "no variant 'aug-9'"),
        (("--gps-brackets", "near:far"), "must look like"),
    ],
)
def test_bad_input_is_one_sentence(monkeypatch, capsys, tmp_path, extra, message):
    cache, _, _ = planted_cache(tmp_path / "cache", n=60)
    code = run_cli(
        monkeypatch,
        "train-head",
        "--cache",
        cache,
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    )
    assert code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_cache_without_labels(monkeypatch, capsys, tmp_path):
    from roadwork_cache.store.cache import Cache

    cache, _, _ = planted_cache(tmp_path / "cache", n=30)
    table = Cache.open(cache).samples()
    import pyarrow as pa

    table = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array([None] * 30, pa.int8())
    )
    pq.write_table(table, cache / "samples.parquet")
    code = run_cli(
        monkeypatch, "train-head", "--cache", cache, "--out", tmp_path / "run", "--no-progress"
    )
    assert code == 2 and "no labelled rows" in capsys.readouterr().err


def test_config_file_for_another_backbone_is_one_sentence(monkeypatch, capsys, tmp_path):
    cache, _, _ = planted_cache(tmp_path / "cache", n=60)
    config = tmp_path / "head.json"
    config.write_text(json.dumps({"head": {"in_dim": 1280}, "train": {"lr": 1e-3}}))
    code = run_cli(
        monkeypatch,
        "train-head",
        "--cache",
        cache,
        "--out",
        tmp_path / "run",
        "--config",
        config,
        "--no-progress",
    )
    assert code == 2
    assert "in_dim 1280 does not match the 32-d features" in capsys.readouterr().err


def test_config_file_with_unknown_train_key(monkeypatch, capsys, tmp_path):
    cache, _, _ = planted_cache(tmp_path / "cache", n=60)
    config = tmp_path / "cfg.yaml"
    config.write_text("head:\n  layers: 1\ntrain:\n  learning_rate: 0.1\n")
    code = run_cli(
        monkeypatch,
        "train-head",
        "--cache",
        cache,
        "--out",
        tmp_path / "run",
        "--config",
        config,
        "--no-progress",
    )
    assert code == 2 and "unknown train config key(s): learning_rate" in capsys.readouterr().err


def test_gps_target_csv_moves_the_sampled_distribution(tmp_path):
    cache, _, _ = planted_cache(tmp_path / "cache", n=150)
    target = tmp_path / "target.csv"
    target.write_text(
        "lat,lon\n" + "".join(f"{42.36 + i * 0.01},{-71.06 - i * 0.01}\n" for i in range(20))
    )  # Boston only
    opts = TrainHeadOptions(
        cache=cache,
        out=tmp_path / "run",
        head=dict(SMALL_HEAD),
        train=TrainConfig(epochs=1, batch_size=64),
        target=str(target),
        device="cpu",
        progress=False,
    )
    run_train_head(opts)
    gps = json.loads((tmp_path / "run" / "config.json").read_text())["gps"]
    assert gps["enabled"] and gps["target"] == str(target)
    # a third of the rows are in Boston; weights 5 (near) vs 0.3 (far) lift that share, in
    # the weights and in the rows the trainer actually drew
    assert gps["share_within_100km_before"] == pytest.approx(1 / 3, abs=0.1)
    assert gps["share_within_100km_after"] > 0.8
    assert gps["share_within_100km_drawn"] > 0.8


def test_a_config_file_sets_what_no_flag_gives(monkeypatch, tmp_path):
    """--config's train section wins over the flags' defaults; a flag given wins over it."""
    cache, _, _ = planted_cache(tmp_path / "cache", n=60)
    config = tmp_path / "cfg.json"
    train = {"epochs": 1, "lr": 2e-3, "loss": {"consistency": 0.0}}
    config.write_text(json.dumps({"head": SMALL_HEAD, "train": train}))
    args = ["--cache", cache, "--out", tmp_path / "run", "--config", config, "--lr", "3e-3"]
    assert run_cli(monkeypatch, "train-head", *args, "--no-progress", "--device", "cpu") == 0
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["epochs"] == 1 and record["train"]["lr"] == 3e-3
    assert record["train"]["loss"]["consistency"] == 0.0
    assert record["train"]["patience"] == 8 and record["train"]["loss"]["weather"] == 0.1
