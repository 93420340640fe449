"""Roadwork masks: supplied masks through every variant's geometry into the 12 views' grid
coverage, checked against values computed here from first principles."""

import io
import json
import re

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from helpers import run_cli
from roadwork_cache.readers.masks import MaskError, decode_mask, parse_classes
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.store.cache import Cache
from roadwork_cache.views import augment as aug
from roadwork_cache.views.challenge import natix_params
from roadwork_cache.views.masks import mask_coverages, view_coverage
from roadwork_cache.views.variants import apply_variant, rng_for

W, H, G = 400, 200, 4
RECT = (130, 40, 290, 151)  # left, top, right, bottom: the roadwork pixels
ARGS = ("--view-size", "32", "--shard-rows", "4", "--workers", "0", "--no-progress", "--no-text")


def layout(width: float, height: float) -> list[tuple[float, float, float, float]]:
    """docs/design.md §3, written out again: global, 3 x 3 tiles of 1/2.5 of each side at
    0, centred, flush end, the centre square, the far square (landscape: right-aligned)."""
    boxes = [(0.0, 0.0, width, height)]
    tw, th = width / 2.5, height / 2.5
    for top in (0.0, (height - th) / 2, height - th):
        for left in (0.0, (width - tw) / 2, width - tw):
            boxes.append((left, top, left + tw, top + th))
    s = min(width, height)
    boxes.append(((width - s) / 2, (height - s) / 2, (width + s) / 2, (height + s) / 2))
    boxes.append((width - s, (height - s) / 2, width, (height + s) / 2) if width >= height else
                 ((width - s) / 2, height - s, (width + s) / 2, height))  # fmt: skip
    return boxes


def overlap(n: int, lo: float, hi: float) -> np.ndarray:
    """How much of each pixel [j, j + 1) of an axis of n pixels lies in [lo, hi)."""
    j = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(j + 1, hi) - np.maximum(j, lo), 0, None)


def expected_coverage(frame: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """[12, G*G] by brute force: every pixel of `frame` (the variant's image is `frame`
    scaled to out_w x out_h) weighted by the area it shares with each cell."""
    frame = frame.astype(np.float64)
    h, w = frame.shape
    sx, sy = w / out_w, h / out_h
    out = np.zeros((12, G * G))
    for v, (left, top, right, bottom) in enumerate(layout(out_w, out_h)):
        cw, ch = (right - left) / G, (bottom - top) / G
        for r in range(G):
            for c in range(G):
                x0, x1 = (left + c * cw) * sx, (left + (c + 1) * cw) * sx
                y0, y1 = (top + r * ch) * sy, (top + (r + 1) * ch) * sy
                inside = overlap(h, y0, y1) @ frame @ overlap(w, x0, x1)
                out[v, r * G + c] = inside / ((x1 - x0) * (y1 - y0))
    return out


def rect_mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    left, top, right, bottom = RECT
    mask[top:bottom, left:right] = 255
    return mask


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder: four PNG photographs of W x H, masks in a manifest 'mask' column
    (row 3 has none, row 2's file is missing)."""
    root = tmp_path_factory.mktemp("masked")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / f"{i}.png")
        if i < 2:
            (root / f"{i}_mask.png").write_bytes(png(rect_mask()))
        mask = {0: "0_mask.png", 1: "1_mask.png", 2: "gone.png", 3: ""}[i]
        rows.append({"filename": f"{i}.png", "label": 1, "mask": mask, "vid_id": f"v{i}"})
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


@pytest.fixture(scope="module")
def extracted(folder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "c"
    with pytest.MonkeyPatch.context() as mp:
        code = run_cli(
            mp, "extract", folder, "--cache", cache, *ARGS, "--variants", "clean,tta:1,natix:2",
            "--mask-dtype", "float16",
        )  # fmt: skip
    assert code == 0
    return Cache.open(cache)


def frame_of(variant: str, sample_id: str) -> tuple[np.ndarray, int, int]:
    """The variant's mask frame and output size, derived here from the recipe's definition
    (torchvision's own rotation for natix levels 1-3)."""
    mask = rect_mask().astype(np.float64) / 255
    if variant == "clean":
        return mask, W, H
    if variant == "tta-0":  # a horizontal mirror
        return mask[:, ::-1], W, H
    params = natix_params(int(variant[-1]) % 4, W, H, rng_for(sample_id, variant))
    if params["level"] == 0:  # the centre square of side H, then 224 px
        left = (W - H) // 2
        return mask[:, left : left + H], 224, 224
    rotated = TF.rotate(torch.from_numpy(mask.astype(np.float32))[None], params["angle"])[0]
    top, left, ch, cw = params["crop"]
    return rotated[top : top + ch, left : left + cw].numpy(), 224, 224


@pytest.mark.parametrize("variant", ["clean", "tta-0", "natix-0", "natix-1"])
def test_a_supplied_rectangle_gives_exactly_the_expected_view_coverage(extracted, variant):
    stored = extracted.group[f"masks/{variant}"][:]
    assert stored.dtype == np.float16 and stored.shape == (4, 12, G * G)
    for row, sample_id in enumerate(("0", "1")):
        frame, out_w, out_h = frame_of(variant, sample_id)
        expected = expected_coverage(frame, out_w, out_h)
        assert np.array_equal(stored[row], expected.astype(np.float16)), variant
    if variant == "natix-1":
        angles = [natix_params(1, W, H, rng_for(i, "natix-1"))["angle"] for i in "01"]
        assert max(map(abs, angles)) > 10  # row 1 is turned by 14.6 degrees
    if variant == "clean":
        # by hand, the global view: rows of 50 px share 10, 50, 50 and 1 px with the
        # rectangle's 40-151, columns of 100 px 0, 70, 90 and 0 px with its 130-290
        rows, cols = np.array([0.2, 1, 1, 0.02]), np.array([0, 0.7, 0.9, 0])
        np.testing.assert_array_equal(stored[0, 0], np.outer(rows, cols).ravel().astype(np.float16))


def test_rows_without_a_mask_are_marked_and_left_empty(extracted):
    np.testing.assert_array_equal(extracted.mask_present(), [True, True, False, False])
    for variant in extracted.mask_variants():
        assert not extracted.masks(variant)[2:].any()
        assert extracted.masks(variant)[:2].any()
    info = extracted.info()
    assert info["mask_rows"] == 2 and info["masks"]["source"] == "column:mask"
    assert info["arrays"]["masks/clean"]["shape"] == [4, 12, 16]


def test_masks_added_to_a_cache_compute_only_the_masks(monkeypatch, folder, tmp_path, capsys):
    cache = tmp_path / "c"
    manifest = folder / "manifest.jsonl"
    plain = tmp_path / "plain.jsonl"  # the same rows without the mask column
    plain.write_text(
        "\n".join(
            json.dumps({k: v for k, v in json.loads(line).items() if k != "mask"})
            for line in manifest.read_text().splitlines()
        )
    )
    assert run_cli(monkeypatch, "extract", folder, "--manifest", plain, "--cache", cache,
                   *ARGS, "--variants", "clean,natix:1") == 0  # fmt: skip
    store = Cache.open(cache)
    assert store.mask_variants() == [] and not store.meta.masks
    markers = sorted((cache / "progress" / "features").rglob("*.done"))
    stamps = [m.stat().st_mtime_ns for m in markers]
    features = store.features("natix-0").copy()
    capsys.readouterr()
    assert run_cli(monkeypatch, "extract", folder, "--cache", cache, *ARGS,
                   "--variants", "clean,natix:1", "--masks", "column:mask") == 0  # fmt: skip
    out = capsys.readouterr().out  # the summary table is a result: stdout
    assert re.search(r"shards written now / total\W+0 / 1", out)  # no feature shard
    assert [m.stat().st_mtime_ns for m in markers] == stamps  # no feature shard rewritten
    store = Cache.open(cache)
    np.testing.assert_array_equal(store.features("natix-0"), features)
    assert store.mask_variants() == ["clean", "natix-0"] and store.meta.complete
    assert int(store.mask_present().sum()) == 2
    assert run_cli(monkeypatch, "cache", "verify", cache) == 0
    # another grid is refused in one sentence
    capsys.readouterr()
    code = run_cli(monkeypatch, "extract", folder, "--cache", cache, *ARGS,
                   "--variants", "clean", "--masks", "column:mask", "--mask-grid", "2")  # fmt: skip
    assert code == 2 and "grid" in capsys.readouterr().err


def test_view_coverage_is_the_exact_pixel_share_for_fractional_boxes():
    rng = np.random.default_rng(1)
    frame = rng.random((37, 83))  # odd sizes: every box and cell edge is fractional
    for out_w, out_h in ((83, 37), (224, 224), (101, 57)):
        got = view_coverage(frame, (out_w, out_h), G)
        np.testing.assert_allclose(got, expected_coverage(frame, out_w, out_h), atol=1e-6)


def test_uint8_stores_the_share_times_255_rounded(tmp_path):
    from helpers import planted_cache

    root, planted, _ = planted_cache(tmp_path / "c", n=40, masks=True)
    store = Cache.open(root, mode="a")
    raw = store.group["masks/clean"][:]
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
    np.testing.assert_array_equal(raw.max(axis=2) == 255, planted)
    shares = np.array([[0.0, 0.3, 0.5, 1.0] + [0.0] * 12] * 12, np.float32)[None]
    shard = store.shards()[0]
    block = np.zeros((len(shard), 12, 16), np.float32)
    block[:1] = shares
    store.write_masks("clean", shard, block)
    assert store.group["masks/clean"][0, 0, :4].tolist() == [0, 76, 128, 255]


def aug_transforms(stage) -> list:
    out = []
    for t in getattr(stage, "transforms", []):
        out += aug_transforms(t) if hasattr(t, "transforms") else [t]
    return out


def test_only_the_geometry_stage_of_aug_can_move_pixels():
    import albumentations as A

    stages = aug._aug_stages()
    geometry = aug_transforms(stages[aug.GEOMETRY_STAGE])
    moving = [t for t in geometry if isinstance(t, A.DualTransform)]
    assert {type(t).__name__ for t in moving} == {"HorizontalFlip", "Affine", "Perspective"}
    for name, stage in stages.items():
        if name != aug.GEOMETRY_STAGE:
            assert all(isinstance(t, A.ImageOnlyTransform) for t in aug_transforms(stage)), name


@pytest.mark.parametrize(
    "variant",
    [f"aug-{k}" for k in range(6)]
    + ["natix-1", "natix-3", "natix-1+tta-0", "natix-3+tta-2", "natix-2+tta-7"],
)
def test_the_mask_follows_the_image_through_random_geometry(variant):
    """A picture that is its own mask (white rectangle on black): after the variant, the
    bright pixels are where the mask went."""
    mask = rect_mask()
    img = Image.fromarray(np.repeat(mask[..., None], 3, axis=2))
    out = np.asarray(apply_variant(img, variant, "row-9").convert("L"), np.float64)
    cover = mask_coverages(img, mask > 0, [variant], "row-9", grid=1)[0, 0, 0]
    from roadwork_cache.views.masks import fit_mask, variant_mask

    frame, size = variant_mask(img, fit_mask(mask > 0, img.size), variant, "row-9")
    moved = np.asarray(Image.fromarray(frame.astype(np.float32)).resize(size, Image.NEAREST)) > 0.5
    bright = out > (out[moved].mean() + out[~moved].mean()) / 2
    agree = (bright == moved).mean()
    assert agree > 0.97, (variant, agree)
    assert cover == pytest.approx(moved.mean(), abs=0.02)


@pytest.mark.parametrize("level", [0, 1, 3])
def test_a_composed_variant_is_the_natix_mask_then_the_tta_transform(level):
    """natix-L+tta-K: the mask of natix-L alone (its seed, not the composed name's), at the
    challenge's 224 px, then tta-K; a left-half mask mirrored by tta-0 ends on the right."""
    from roadwork_cache.views.masks import fit_mask, tta_mask, variant_mask

    img = Image.fromarray(np.zeros((H, W, 3), np.uint8))
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1.0
    natix, natix_size = variant_mask(img, left, f"natix-{level}", "row-4")
    assert natix_size == (224, 224)
    for k in (0, 2, 7):
        frame, size = variant_mask(img, left, f"natix-{level}+tta-{k}", "row-4")
        expected = tta_mask(fit_mask(natix, natix_size), k)
        np.testing.assert_array_equal(frame, expected)
        image = apply_variant(img, f"natix-{level}+tta-{k}", "row-4")
        assert size == image.size == (expected.shape[1], expected.shape[0])
    mirrored, _ = variant_mask(img, left, f"natix-{level}+tta-0", "row-4")
    np.testing.assert_array_equal(mirrored, fit_mask(natix, natix_size)[:, ::-1])
    if level < 3:  # row-4's crops at levels 0 and 1 keep the roadwork on the left...
        before = fit_mask(natix, natix_size)
        assert before[:, :112].mean() > 0.8 and before[:, 112:].mean() < 0.1
        # ...so the mirror puts it on the right
        assert mirrored[:, 112:].mean() > 0.8 and mirrored[:, :112].mean() < 0.1, level


def test_the_image_is_unchanged_by_carrying_a_mask():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 160, 3), np.uint8))
    before = [np.asarray(apply_variant(img, f"aug-{k}", "a")) for k in range(4)]
    mask_coverages(img, np.ones((90, 160), bool), [f"aug-{k}" for k in range(4)], "a")
    after = [np.asarray(apply_variant(img, f"aug-{k}", "a")) for k in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# ---- supplied mask files ----------------------------------------------------------------


def test_decode_binary_and_indexed_masks():
    binary = np.zeros((4, 6), np.uint8)
    binary[1:3, 2:5] = 1
    np.testing.assert_array_equal(decode_mask(png(binary * 255)), binary.astype(bool))
    np.testing.assert_array_equal(decode_mask(png(binary)), binary.astype(bool))
    one_bit = Image.fromarray(binary.astype(bool))
    buf = io.BytesIO()
    one_bit.save(buf, "PNG")
    np.testing.assert_array_equal(decode_mask(buf.getvalue()), binary.astype(bool))
    classes = np.array([[0, 1, 2, 3, 4, 255]] * 2, np.uint8)
    indexed = Image.fromarray(classes, "P")
    indexed.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    buf = io.BytesIO()
    indexed.save(buf, "PNG")
    data = buf.getvalue()
    assert decode_mask(data)[0].tolist() == [False, True, True, True, True, True]
    assert decode_mask(data, (2, 4))[0].tolist() == [False, False, True, False, True, False]
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = (0, 0, 9)
    assert decode_mask(png(rgb)).sum() == 1
    with pytest.raises(MaskError, match="class ids"):
        decode_mask(png(rgb), (1,))
    with pytest.raises(MaskError, match="not an image"):
        decode_mask(b"not a png")


def test_parse_classes():
    assert parse_classes("1,2,5-7") == (1, 2, 5, 6, 7)
    assert parse_classes(None) is None and parse_classes(" ") is None
    with pytest.raises(UserError, match="class ids"):
        parse_classes("cone")


def test_parquet_mask_column_of_bytes_and_paths(monkeypatch, tmp_path, capsys):
    from helpers import natix_row, write_shard

    small = np.zeros((24, 32), np.uint8)
    small[:, :16] = 255  # the left half is roadwork
    (tmp_path / "m.png").write_bytes(png(small))
    shards = [  # one cell type per file, as a parquet column has one type
        [{"bytes": png(small), "path": None}, {"bytes": None, "path": "m.png"}, None],
        ["m.png", "missing.png"],  # paths beside the shard
        [b"garbage", png(np.zeros((10, 10), np.uint8))],  # a square mask of a 32 x 24 image
    ]
    i = 0
    for k, cells in enumerate(shards):
        rows = []
        for cell in cells:
            rows.append({**natix_row(i), "roadwork_mask": cell})
            i += 1
        write_shard(tmp_path / f"train-0000{k}-of-00003.parquet", rows)
    cache = tmp_path / "c"
    assert run_cli(monkeypatch, "extract", f"{tmp_path}/*.parquet", "--cache", cache, *ARGS,
                   "--masks", "column:roadwork_mask") == 0  # fmt: skip
    out = capsys.readouterr().out  # the summary table is a result: stdout
    for reason in ("mask file not found: missing.png", "mask is not an image", "does not fit"):
        assert reason in out
    store = Cache.open(cache)
    np.testing.assert_array_equal(store.mask_present(), [1, 1, 0, 1, 0, 0, 0])
    left = store.masks("clean")[0, 0].reshape(4, 4)
    np.testing.assert_allclose(left, [[1, 1, 0, 0]] * 4)
    for row in (1, 3):
        np.testing.assert_array_equal(store.masks("clean")[0], store.masks("clean")[row])
    code = run_cli(monkeypatch, "extract", f"{tmp_path}/*.parquet", "--cache", tmp_path / "d",
                   *ARGS, "--masks", "column:nope")  # fmt: skip
    assert code == 2 and "no mask column 'nope'" in capsys.readouterr().err
