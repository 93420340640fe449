"""12-view geometry: pure functions of (width, height)."""

import pytest
from PIL import Image

from roadwork_cache.views.geometry import N_VIEWS, VIEW_NAMES, render_views, view_boxes

SIZES = [(4032, 3024), (1920, 1080), (224, 224), (1080, 1920), (3024, 4032)]


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_twelve_boxes_inside_the_image(w, h):
    boxes = view_boxes(w, h)
    assert len(boxes) == N_VIEWS == len(VIEW_NAMES)
    for box in boxes:
        assert 0 <= box.left < box.right <= w
        assert 0 <= box.top < box.bottom <= h


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_global_view_is_the_whole_image(w, h):
    assert tuple(view_boxes(w, h)[0]) == (0, 0, w, h)


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_tiles_are_a_3x3_grid_with_quarter_overlap_covering_the_image(w, h):
    tiles = view_boxes(w, h)[1:10]
    for tile in tiles:
        assert tile.width == pytest.approx(w / 2.5)
        assert tile.height == pytest.approx(h / 2.5)
    lefts = sorted({round(t.left, 6) for t in tiles})
    tops = sorted({round(t.top, 6) for t in tiles})
    assert lefts == pytest.approx([0, (w - w / 2.5) / 2, w - w / 2.5])
    assert tops == pytest.approx([0, (h - h / 2.5) / 2, h - h / 2.5])
    # neighbouring tiles overlap by a quarter of a tile: the grid covers the image exactly
    tw = w / 2.5
    assert (lefts[0] + tw - lefts[1]) / tw == pytest.approx(0.25)
    assert (lefts[1] + tw - lefts[2]) / tw == pytest.approx(0.25)
    assert max(t.right for t in tiles) == pytest.approx(w)
    assert max(t.bottom for t in tiles) == pytest.approx(h)
    # row-major order: r0c0, r0c1, r0c2, r1c0, ...
    assert tiles[1].left > tiles[0].left and tiles[1].top == tiles[0].top
    assert tiles[3].top > tiles[0].top and tiles[3].left == tiles[0].left


def test_tiles_keep_the_image_aspect_so_all_views_squash_alike():
    w, h = 1920, 1080
    g = view_boxes(w, h)[0]
    for tile in view_boxes(w, h)[1:10]:
        assert tile.width / tile.height == pytest.approx(g.width / g.height)


def test_squares_landscape():
    centre, far = view_boxes(1920, 1080)[10:]
    assert tuple(centre) == pytest.approx((420, 0, 1500, 1080))
    assert tuple(far) == pytest.approx((840, 0, 1920, 1080))


def test_squares_portrait_far_square_is_bottom_aligned():
    centre, far = view_boxes(1080, 1920)[10:]
    assert tuple(centre) == pytest.approx((0, 420, 1080, 1500))
    assert tuple(far) == pytest.approx((0, 840, 1080, 1920))


def test_square_image_all_squares_are_the_whole_image():
    for box in view_boxes(224, 224)[10:]:
        assert tuple(box) == (0, 0, 224, 224)


def test_bad_size_is_refused():
    with pytest.raises(ValueError):
        view_boxes(0, 10)


def test_render_views_cuts_the_right_region():
    # left half red, right half blue: the far (right-aligned) square of a 2:1 image is
    # entirely blue, the first tile entirely red.
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 0, 255), (100, 0, 200, 100))
    views = render_views(img, 32)
    assert len(views) == 12 and all(v.size == (32, 32) for v in views)
    assert views[11].getpixel((16, 16)) == (0, 0, 255)
    assert views[1].getpixel((16, 16)) == (255, 0, 0)
