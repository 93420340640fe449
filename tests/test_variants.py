"""Variant recipes: parsing, determinism, the validator's challenge levels, TTA geometry."""

import numpy as np
import pytest
from PIL import Image

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.synth.scene import render_scene
from roadwork_cache.views.challenge import (
    BLUR_KERNEL,
    CHALLENGE_SIZE,
    CONTRAST,
    JPEG_FACTOR,
    NOISE_VAR,
    SATURATION,
    colour_contrast,
    colour_saturation,
    gaussian_blur,
    gaussian_noise_colour,
    jpeg_resample,
    jpeg_round_trip,
    natix_params,
)
from roadwork_cache.views.variants import apply_variant, parse_variants, recipe, rng_for, tta_image


@pytest.fixture(scope="module")
def scene():
    return render_scene(np.random.default_rng(3), 480, 270, True)


def test_parse_variants():
    assert parse_variants("clean,aug:2,natix:4,tta:3") == [
        "clean",
        "aug-0",
        "aug-1",
        "natix-0",
        "natix-1",
        "natix-2",
        "natix-3",
        "tta-0",
        "tta-1",
        "tta-2",
    ]
    assert parse_variants("clean,clean,aug-1") == ["clean", "aug-1"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("blur:3", "unknown variant"),
        ("aug:x", "not a whole number"),
        ("tta:9", "1 to 8"),
        ("aug", "needs a count"),
        ("", "no variants"),
        ("aug:0", "at least 1"),
    ],
)
def test_bad_variant_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_variants(spec)


def test_recipes_are_named_and_versioned():
    r = recipe("natix-6")
    assert r["kind"] == "natix" and r["level"] == 2 and r["version"] >= 1 and r["ops"]
    assert recipe("aug-3")["library"] == "albumentations"


@pytest.mark.parametrize("name", ["aug-0", "aug-5", "natix-1", "natix-3", "tta-4"])
def test_variants_are_deterministic_per_image_and_differ_between_images(scene, name):
    a = np.asarray(apply_variant(scene, name, "row-17"))
    b = np.asarray(apply_variant(scene, name, "row-17"))
    assert np.array_equal(a, b)
    if not name.startswith("tta"):  # TTA is deterministic and does not depend on the id
        others = [np.asarray(apply_variant(scene, name, f"row-{i}")) for i in range(4)]
        assert any(o.shape != a.shape or not np.array_equal(o, a) for o in others)


def test_seed_depends_on_image_and_variant_only():
    assert rng_for("x", "aug-1").random() == rng_for("x", "aug-1").random()
    assert rng_for("x", "aug-1").random() != rng_for("x", "aug-2").random()


def test_aug_changes_the_image_and_keeps_its_size(scene):
    out = [np.asarray(apply_variant(scene, f"aug-{k}", "7")) for k in range(6)]
    assert all(o.shape == np.asarray(scene).shape for o in out)
    assert sum(not np.array_equal(o, np.asarray(scene)) for o in out) >= 5


# ---- the validator's challenge, level by level --------------------------------------------


def test_level_0_is_the_centre_square_resized_to_224_as_a_q75_jpeg():
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (100, 0, 300, 200))  # the centre square is blue
    out = apply_variant(img, "natix-0", "a")
    assert out.size == (CHALLENGE_SIZE, CHALLENGE_SIZE)
    r, g, b = np.asarray(out).reshape(-1, 3).mean(axis=0)
    assert b > 240 and r < 15
    expected = jpeg_round_trip(
        img.crop((100, 0, 300, 200)).resize((224, 224), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_levels_1_to_3_draw_the_subnet_parameters(level):
    width, height = 640, 360
    for seed in range(200):
        p = natix_params(level, width, height, np.random.default_rng(seed))
        assert -20.0 <= p["angle"] <= 20.0
        top, left, h, w = p["crop"]
        assert h == w  # ratio 1
        assert 0 <= top <= height - h and 0 <= left <= width - w
        assert 0.2 * width * height * 0.99 <= h * w <= width * height or h == min(width, height)
        sev = p["severity"]
        if level == 1:
            assert sev == {}
        elif level == 2:
            assert set(sev) == {"saturation", "contrast", "jpeg"}
            assert set(sev.values()) <= {0, 1}
        else:
            assert set(sev) == {"saturation", "contrast", "jpeg", "noise", "blur"}
            assert set(sev.values()) <= {0, 1, 2}
    angles = [
        natix_params(level, width, height, np.random.default_rng(s))["angle"] for s in range(300)
    ]
    assert min(angles) < -15 and max(angles) > 15  # the whole +-20 range is used


def test_level_3_uses_every_severity():
    seen = {name: set() for name in ("saturation", "contrast", "jpeg", "noise", "blur")}
    for seed in range(100):
        for name, value in natix_params(3, 100, 100, np.random.default_rng(seed))[
            "severity"
        ].items():
            seen[name].add(value)
    assert all(values == {0, 1, 2} for values in seen.values())


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_level_ends_as_a_224_px_challenge(scene, level):
    out = apply_variant(scene, f"natix-{level}", "r1")
    assert out.size == (224, 224) and out.mode == "RGB"
    assert apply_variant(scene, f"natix-{level + 4}", "r1").size == (224, 224)


def test_distortions_match_their_parameter_tables():
    rng = np.random.default_rng(0)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, 80, 40
    # saturation: the chroma (distance from grey) shrinks by the factor
    for factor in SATURATION:
        out = colour_saturation(colour, factor).astype(float)
        grey_in = colour.astype(float).mean(axis=2, keepdims=True)
        grey_out = out.mean(axis=2, keepdims=True)
        ratio = np.abs(out - grey_out).mean() / np.abs(colour - grey_in).mean()
        assert ratio == pytest.approx(factor, abs=0.03)
    # contrast: intensities scaled by the factor (truncated)
    for factor in CONTRAST:
        assert colour_contrast(colour, factor)[0, 0, 0] == int(200 * factor)
    # jpeg: down- and up-sampling by the factor removes detail finer than the factor
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255
    for factor in JPEG_FACTOR:
        out = jpeg_resample(stripes, factor)
        assert out.shape == stripes.shape and out.std() < stripes.std() / 2
    # noise: the added noise's spread grows with the variance
    flat = np.full((64, 64, 3), 128, np.uint8)
    spreads = [gaussian_noise_colour(flat, v, rng).astype(float).std() for v in NOISE_VAR]
    assert 0 < spreads[0] < spreads[1]
    # noise of std sqrt(var) on the studio-range YCbCr scale, back through the inverse:
    # Y gains 255/219 of it, chroma 255/224, and R, G, B mix chroma by 1.403 / .714+.344 / 1.773
    sy, sc = np.sqrt(NOISE_VAR[0]) * 255 * 255 / 219, np.sqrt(NOISE_VAR[0]) * 255 * 255 / 224
    per_channel = [
        sy**2 + (1.403 * sc) ** 2,
        sy**2 + (0.714 * sc) ** 2 + (0.344 * sc) ** 2,
        sy**2 + (1.773 * sc) ** 2,
    ]
    assert spreads[0] == pytest.approx(np.sqrt(np.mean(per_channel)), rel=0.05)
    # blur: a bigger kernel blurs more
    step = np.zeros((32, 64, 3), np.uint8)
    step[:, 32:] = 255
    ramps = [((b > 5) & (b < 250)).sum() for b in (gaussian_blur(step, k) for k in BLUR_KERNEL)]
    assert 0 < ramps[0] < ramps[1]  # the edge spreads wider with the bigger kernel


def test_tta_geometry():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 100))  # white band on the left
    flipped = np.asarray(tta_image(img, 0))
    assert flipped[50, 195].sum() == 765 and flipped[50, 5].sum() == 0
    assert tta_image(img, 1).size == (180, 90)
    assert tta_image(img, 2).size == (220, 110)
    corners = [tta_image(img, k) for k in range(3, 7)]
    assert all(c.size == (170, 85) for c in corners)
    assert np.asarray(corners[0])[40, 5].sum() == 765  # top-left keeps the band
    assert np.asarray(corners[1])[40, 5].sum() == 0  # top-right loses it
