"""SAM 3 masks from text prompts: a tiny random-weight SAM 3 written as a real transformers
folder, run through `roadwork extract --masks sam3` end to end."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import natix_row, run_cli, write_shard
from roadwork_cache.backbone.sam3_tiny import write_tiny_sam3
from roadwork_cache.backbone.segmenter import DEFAULT_PROMPTS, load_segmenter, sam3_model_type
from roadwork_cache.readers.images import decode_image
from roadwork_cache.store.cache import Cache
from roadwork_cache.views.batching import draft_side
from roadwork_cache.views.masks import mask_coverages

ARGS = ("--view-size", "32", "--shard-rows", "4", "--workers", "0", "--no-progress", "--no-text")
VARIANTS = ["clean", "aug-0", "natix-0", "natix-1", "tta-0"]


@pytest.fixture(scope="module")
def sam3(tmp_path_factory):
    return write_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3")


@pytest.fixture(scope="module")
def segmenter(sam3):
    # The random model scores every query about 0.25: threshold 0 keeps them all.
    return load_segmenter(sam3, score_threshold=0.0)


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 160, 3), np.uint8))


def test_the_folder_is_a_real_transformers_sam3(sam3):
    names = {p.name for p in sam3.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json"} <= names
    assert json.loads((sam3 / "config.json").read_text())["model_type"] == "sam3"
    assert sam3_model_type(sam3) == "sam3"


def test_one_batched_pass_equals_the_library_path_prompt_by_prompt(segmenter, photo):
    """transformers' documented use, one prompt at a time (processor -> model -> instance
    post-processing), united over the prompts, against the batched fast path. Masks are
    post-processed at most at the model's input side (112 px here), then brought to the
    photo's size with nearest neighbours."""
    proc, model = segmenter.processor, segmenter.model
    side = model.config.vision_config.backbone_config.image_size
    scale = side / max(photo.size)
    w, h = round(photo.width * scale), round(photo.height * scale)
    union = np.zeros((h, w), bool)
    with torch.inference_mode():
        for prompt in DEFAULT_PROMPTS:
            out = model(**proc(images=photo, text=prompt, return_tensors="pt"))
            found = proc.post_process_instance_segmentation(
                out, threshold=0.0, mask_threshold=0.5, target_sizes=[(h, w)]
            )[0]
            union |= found["masks"].bool().any(0).numpy()
    expected = np.asarray(Image.fromarray(union).resize(photo.size, Image.Resampling.NEAREST))
    mask = segmenter.segment(photo, DEFAULT_PROMPTS)
    assert mask.shape == (90, 160) and mask.dtype == bool
    assert 0.05 < mask.mean() < 0.99  # a real, partial mask
    np.testing.assert_array_equal(mask, expected)
    small = segmenter.segment(photo, DEFAULT_PROMPTS, size=(w, h))  # no resize below the cap
    np.testing.assert_array_equal(small, union)


def test_a_high_threshold_finds_nothing_in_a_random_model(sam3, photo):
    assert not load_segmenter(sam3, score_threshold=0.5).segment(photo).any()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        img = Image.fromarray(rng.integers(0, 256, (120, 200, 3), np.uint8))
        import io

        buf = io.BytesIO()
        img.save(buf, "JPEG")
        rows.append(natix_row(i, image={"bytes": buf.getvalue(), "path": f"{i}.jpg"}))
    rows[4]["image"] = {"bytes": b"broken", "path": "4.jpg"}
    write_shard(root / "train-00000-of-00001.parquet", rows)
    return root


def test_extract_masks_sam3_end_to_end(monkeypatch, capsys, sam3, segmenter, source, tmp_path):
    cache = tmp_path / "c"
    code = run_cli(
        monkeypatch, "extract", f"{source}/*.parquet", "--cache", cache, *ARGS,
        "--variants", "clean,aug:1,natix:2,tta:1", "--masks", "sam3", "--segmenter", sam3,
        "--mask-score", "0",
    )  # fmt: skip
    assert code == 0
    store = Cache.open(cache)
    masks = store.meta.masks
    assert masks["source"] == "sam3" and masks["grid"] == 4
    assert masks["prompts"] == list(DEFAULT_PROMPTS)
    weights = hashlib.sha256((sam3 / "model.safetensors").read_bytes()).hexdigest()
    assert masks["segmenter"]["weights_sha256"] == weights
    assert masks["segmenter"]["score_threshold"] == 0.0
    np.testing.assert_array_equal(store.mask_present(), [1, 1, 1, 1, 0, 1])
    assert store.mask_variants() == sorted(VARIANTS)
    # every stored grid is what the segmenter and the geometry give for that image
    for row, sample in enumerate(store.samples().to_pylist()):
        if row == 4:
            assert not any(store.masks(v)[row].any() for v in VARIANTS)
            continue
        data = natix_bytes(source, row)
        img = decode_image(data, draft_side=draft_side(32))
        full = segmenter.segment(decode_image(data), size=img.size)
        expected = mask_coverages(img, full, VARIANTS, sample["id"])
        for k, variant in enumerate(VARIANTS):
            np.testing.assert_array_equal(
                store.group[f"masks/{variant}"][row], np.round(expected[k] * 255).astype(np.uint8)
            )
    clean = store.masks("clean")[store.mask_present()]
    assert 0.05 < clean.mean() < 0.99
    assert run_cli(monkeypatch, "cache", "verify", cache) == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, "cache", "info", cache, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mask_rows"] == 5 and info["arrays"]["masks/natix-1"]["dtype"] == "uint8"


def natix_bytes(source, row: int) -> bytes:
    import pyarrow.parquet as pq

    table = pq.read_table(next(source.glob("*.parquet")), columns=["image"])
    return table.column("image")[row].as_py()["bytes"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--masks", "sam3"), "needs --segmenter"),
        (("--masks", "sam3", "--segmenter", "NOTSAM"), "is not a SAM 3 folder"),
        (("--masks", "sam3", "--segmenter", "SAM3", "--prompts", "cone " * 40), "tokens long"),
        (("--masks", "sam4"), "must be 'sam3' or 'column:NAME'"),
        (("--masks", "column:mask", "--mask-grid", "0"), "--mask-grid"),
        (("--masks", "sam3", "--segmenter", "SAM3", "--mask-score", "1.5"), "--mask-score"),
        (("--masks", "column:mask", "--mask-dtype", "int8"), "--mask-dtype"),
    ],
)
def test_bad_mask_flags_are_one_sentence(
    monkeypatch, capsys, sam3, source, tmp_path, extra, message
):
    not_sam = tmp_path / "dino"
    not_sam.mkdir()
    (not_sam / "config.json").write_text(json.dumps({"model_type": "dinov3_vit"}))
    extra = [str(not_sam) if e == "NOTSAM" else str(sam3) if e == "SAM3" else e for e in extra]
    code = run_cli(
        monkeypatch, "extract", f"{source}/*.parquet", "--cache", tmp_path / "c", *ARGS, *extra
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err


def test_an_image_and_video_checkpoint_loads_its_detector(sam3, tmp_path, photo, segmenter):
    """The combined SAM 3 checkpoint: model_type sam3_video with a SAM 3 detector_config and
    the detector's weights under `detector_model.`."""
    from safetensors.torch import load_file, save_file

    video = tmp_path / "video"
    video.mkdir()
    config = json.loads((sam3 / "config.json").read_text())
    (video / "config.json").write_text(
        json.dumps({"model_type": "sam3_video", "detector_config": config})
    )
    state = {f"detector_model.{k}": v for k, v in load_file(sam3 / "model.safetensors").items()}
    save_file(state, video / "model.safetensors", metadata={"format": "pt"})
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (sam3 / name).exists():
            shutil.copy(sam3 / name, video / name)
    loaded = load_segmenter(video, score_threshold=0.0)
    assert loaded.info["model_type"] == "sam3_video"
    np.testing.assert_array_equal(loaded.segment(photo), segmenter.segment(photo))
