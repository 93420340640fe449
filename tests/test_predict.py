"""`roadwork predict` and `RoadworkDetector` on the real photographs of tests/data/real, with
the tiny backbone: a probability for each image, an error line for a corrupt one, the same
numbers as the cache-based `roadwork tta`, and the detector equal to `predict`."""

import csv
import json
import multiprocessing
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import HEAD_32, run_cli, shared_real
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.inference.bundles import load_bundle
from roadwork_cache.inference.head_folder import HeadRecord, write_head
from roadwork_cache.readers.images import ImageError
from roadwork_cache.stages.extract import ExtractConfig, run_extract
from roadwork_cache.stages.predict import PredictOptions, run_predict
from roadwork_cache.store.cache import Cache
from roadwork_cache.views.batching import image_views

REAL = shared_real()
VIEW_SIZE = 64  # JPEG draft decoding stays off for the 256 px photo: file and PIL paths agree
HEAD = {**HEAD_32, "dropout": 0.0}


def real_photos() -> list[Path]:
    assert REAL.is_dir(), (
        f"the real test photographs are missing: expected {REAL} (tests/data/real, see its "
        "README.md; or set ROADWORK_SHARED)"
    )
    photos = sorted(p for p in REAL.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    assert len(photos) == 5, f"expected 4 PNGs and 1 JPEG in {REAL}, found {photos}"
    return photos


def write_model(folder: Path, cache: Path, threshold: float = 0.4) -> Path:
    """A model folder as `train-head` writes it (config.json + model.safetensors) with a
    seeded, untrained head: predict's plumbing does not depend on what the head learned."""
    attrs = Cache.open(cache).attrs
    config = HeadConfig.from_dict({"in_dim": attrs["feature_dim"], **HEAD})
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = RoadworkHead(config)
    record = HeadRecord(
        kind="train-head",
        head=config.to_dict(),
        backbone=attrs["backbone"],
        views=attrs["views"],
        cache=str(cache),
        threshold=threshold,
    )
    write_head(folder, model, record)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The photos as an image folder with a manifest, a tiny cache of them (clean + 2 TTA
    variants), a model on that cache, and `roadwork tta` run once (writes foods.safetensors)."""
    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    photos.mkdir()
    with open(photos / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "id", "label", "split"])
        for path in real_photos():
            shutil.copy(path, photos / path.name)
            writer.writerow([path.name, path.name, int(path.name.startswith("roadwork")), "train"])
    cache = root / "cache"
    run_extract(
        ExtractConfig(
            source=str(photos),
            cache=cache,
            view_size=VIEW_SIZE,
            variants=["clean", "tta-0", "tta-1"],
            text=False,
            workers=0,
            device="cpu",
            progress=False,
        )
    )
    model = write_model(root / "model", cache)
    from roadwork_cache.stages.tta import TtaOptions, run_tta

    run_tta(
        TtaOptions(
            cache=cache,
            model=model,
            out=root / "tta.parquet",
            split="all",
            device="cpu",
            progress=False,
        )
    )
    broken = root / "broken.jpg"
    data = (REAL / "not_street_face.jpg").read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # a valid header, half the pixels
    return {"root": root, "photos": photos, "cache": cache, "model": model, "broken": broken}


def predict_json(monkeypatch, capsys, *args) -> tuple[int, list[dict]]:
    capsys.readouterr()
    code = run_cli(monkeypatch, "predict", *args, "--json", "--device", "cpu")
    return code, json.loads(capsys.readouterr().out)


def test_predict_answers_every_photo_and_an_error_for_a_corrupt_file(monkeypatch, capsys, setup):
    code, answers = predict_json(
        monkeypatch, capsys, setup["photos"], setup["broken"], "--model", setup["model"]
    )
    assert code == 1  # one image could not be read; the others still got answers
    by_name = {Path(a["path"]).name: a for a in answers}
    assert set(by_name) == {p.name for p in real_photos()} | {"broken.jpg"}
    for name, answer in by_name.items():
        if name == "broken.jpg":
            assert answer["probability"] is None and answer["roadwork"] is None
            assert "truncated" in answer["error"] or "corrupt" in answer["error"]
        else:
            assert answer["error"] is None and 0.0 <= answer["probability"] <= 1.0
            assert answer["roadwork"] == (answer["probability"] > 0.5)
    assert len({round(a["probability"], 9) for a in answers if a["probability"]}) == 5


def test_predict_reproduces_the_cache_and_the_tta_stage(setup):
    """Images -> views -> tiny backbone -> head gives what the cache-based path gives: the
    clean probability equals the bundle on cached features, and --tta with the FOODS
    statistics equals `roadwork tta`'s probability, image by image."""
    opts = PredictOptions(
        inputs=[str(setup["photos"])], model=setup["model"], device="cpu", progress=False
    )
    plain, _ = run_predict(opts)
    opts.tta = True
    tta, predictor = run_predict(opts)
    assert predictor.variants == ("clean", "tta-0", "tta-1") and predictor.combine == "foods"

    cache = Cache.open(setup["cache"])
    ids = cache.samples()["id"].to_pylist()
    cached = load_bundle(setup["model"]).predict(cache.features("clean").astype(np.float32))
    expected = dict(zip(ids, cached, strict=True))
    table = pq.read_table(setup["root"] / "tta.parquet").to_pydict()
    foods = dict(zip(table["id"], table["probability"], strict=True))
    for a, t in zip(plain, tta, strict=True):
        name = Path(a.path).name
        assert a.probability == pytest.approx(expected[name], abs=1e-5)
        assert t.probability == pytest.approx(foods[name], abs=1e-5)


def test_predict_gives_the_callers_torch_threads_back(setup):
    """predict sets torch's intra-op threads beside its decoding workers on a CPU; that
    setting is process-global, so the caller's comes back when it returns."""
    before = torch.get_num_threads()
    mine = (os.cpu_count() or 1) + 2  # never what predict picks (cores - workers)
    torch.set_num_threads(mine)
    try:
        opts = PredictOptions(
            inputs=[str(setup["photos"])],
            model=setup["model"],
            device="cpu",
            workers=1,
            batch_size=1,  # more images than one batch: the worker is used
            progress=False,
        )
        answers, _ = run_predict(opts)
        assert all(a.probability is not None for a in answers)
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)


def test_detector_matches_predict_and_is_thread_safe(setup):
    from roadwork_cache import RoadworkDetector

    opts = PredictOptions(
        inputs=[str(setup["photos"])], model=setup["model"], device="cpu", tta=True, progress=False
    )
    answers, _ = run_predict(opts)
    detector = RoadworkDetector.load(setup["model"], device="cpu", tta=True)
    detector.load_model()  # idempotent
    images = [Image.open(a.path) for a in answers]
    for answer, img in zip(answers, images, strict=True):
        p = detector(img)
        assert isinstance(p, float) and p == pytest.approx(answer.probability, abs=1e-6)

    results: dict[int, float] = {}

    def call(i: int) -> None:
        results[i] = detector(images[i % len(images)].copy())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, p in results.items():
        assert p == pytest.approx(answers[i % len(answers)].probability, abs=1e-6)

    truncated = Image.open(setup["broken"])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        detector(truncated)
    with pytest.raises(ValueError, match="expected a PIL.Image.Image"):
        detector(np.zeros((224, 224, 3), np.uint8))
    with pytest.raises(ImageError, match="too small"):
        detector(Image.new("RGB", (8, 8)))


def test_predict_refuses_a_model_of_another_backbone_or_layout(monkeypatch, capsys, setup):
    root = setup["root"]
    for name, change, words in (
        ("other-weights", {"state_sha256": "0" * 64}, "randomly initialised tiny weights"),
        ("other-pool", {"pool": "cls+mean"}, "has feature_dim = 128"),
        ("other-layout", None, "view layout grid2x2"),
    ):
        model = root / name
        shutil.copytree(setup["model"], model)
        config = json.loads((model / "config.json").read_text())
        if change:
            config["backbone"] = {**config["backbone"], **change}
        else:
            config["views"]["layout"] = "grid2x2-v0"
        (model / "config.json").write_text(json.dumps(config))
        capsys.readouterr()
        code = run_cli(
            monkeypatch,
            "predict",
            setup["photos"],
            "--model",
            model,
            "--device",
            "cpu",
            "--no-progress",
        )
        err = capsys.readouterr().err
        assert code == 2 and words in err, err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_empty_folder_and_incomplete_model_are_one_sentence(monkeypatch, capsys, setup):
    root = setup["root"]
    empty = root / "empty"
    empty.mkdir()
    code = run_cli(monkeypatch, "predict", empty, "--model", setup["model"], "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "no JPEG, PNG or WebP images in" in err and len(err.splitlines()) == 1

    partial = root / "partial"
    partial.mkdir()
    shutil.copy(setup["model"] / "config.json", partial / "config.json")
    code = run_cli(monkeypatch, "predict", setup["photos"], "--model", partial)
    err = capsys.readouterr().err
    assert code == 2 and "is missing model.safetensors" in err and len(err.splitlines()) == 1

    code, answers = predict_json(
        monkeypatch,
        capsys,
        str(setup["photos"] / "*.png"),
        root / "nowhere.jpg",
        "--model",
        setup["model"],
    )
    assert code == 1 and len(answers) == 5
    assert answers[-1]["error"].startswith("no such file")


def test_demo_answers_on_stdout_and_logs_on_stderr(tmp_path, capsys):
    """Each step's table and the closing table of paths are results (stdout); the step
    titles and notes are log lines (stderr), as for every other command."""
    from roadwork_cache.stages.demo import DemoOptions, run_demo

    run_demo(DemoOptions(out=tmp_path / "demo", rows=120, epochs=1, text=False))
    out, err = capsys.readouterr()
    for title in ("extract:", "train-head:", "predict:", "demo: where everything is"):
        assert title in out, title
    assert "where everything is" not in err and "0.5 is the cut" not in err
    assert "model used from here on" in err and "model used from here on" not in out


def test_demo_refuses_a_used_folder_and_variants_without_tta(tmp_path):
    from roadwork_cache.runtime.errors import UserError
    from roadwork_cache.stages.demo import DemoOptions, run_demo

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        run_demo(DemoOptions(out=tmp_path / "used"))
    with pytest.raises(UserError, match="needs tta variants"):
        run_demo(DemoOptions(out=tmp_path / "new", variants="clean,aug:2"))


# ---- TTA views cut in threads, and processes forked after that ---------------------------------

FORK_VARIANTS = ("clean", "tta-0", "tta-1")


def _fork_image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))


class _ViewsDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return image_views(_fork_image(), FORK_VARIANTS, 32)


def _views_in_child(_):
    return image_views(_fork_image(), FORK_VARIANTS, 32)


def test_views_are_cut_in_processes_forked_after_the_parent_used_its_thread_pool():
    want = image_views(_fork_image(), FORK_VARIANTS, 32)  # the parent's pool now exists
    loader = torch.utils.data.DataLoader(
        _ViewsDataset(), batch_size=None, num_workers=1, timeout=60
    )
    for got in loader:
        assert np.array_equal(np.asarray(got), want)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.map_async(_views_in_child, [0]).get(timeout=60)[0]
    assert np.array_equal(got, want)
