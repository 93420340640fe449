"""What the reduced-scale (draft) JPEG decode buys, and what it changes.

    python bench/decode.py                       # 1920x1080 and 4032x3024, views 512/224/64
    python bench/decode.py --sizes 1920x1080 --view-sizes 512 --repeats 20

`roadwork extract` decodes `clean` and `aug` variants of a JPEG at the smallest DCT scale
(1/2, 1/4, 1/8) that keeps both sides at least `view_size / 0.4` (a tile is 1/2.5 of a
side); `natix` and `tta` variants, which the validator renders from the full image, always
use the full decode. For each image size and view size this prints the per-image time of
decode + variant + 12 views with the draft and with the full decode (same process, same
bytes, interleaved), their ratio, the decoded size, and how far the draft's views are from
the full decode's (mean absolute difference over the 12 views, in 8-bit levels).

The image is a synthetic road scene saved as a JPEG at quality 90; times are single-threaded
CPU, as one DataLoader worker runs them.
"""

from __future__ import annotations

import argparse
import io
import platform
import time

import numpy as np
import torch

from roadwork_cache.readers.images import MAX_PIXELS, decode_image
from roadwork_cache.synth.scene import render_scene
from roadwork_cache.views.batching import draft_side
from roadwork_cache.views.geometry import render_views
from roadwork_cache.views.variants import apply_variant, prepare_variants


def views_of(data: bytes, variant: str, view_size: int, draft: int | None) -> np.ndarray:
    img = decode_image(data, MAX_PIXELS, draft)
    img = apply_variant(img, variant, "bench-0")
    return np.stack([np.asarray(v) for v in render_views(img, view_size)])


def seconds(data: bytes, variant: str, view_size: int, draft: int | None, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        views_of(data, variant, view_size, draft)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1920x1080,4032x3024", help="image sizes, WxH")
    ap.add_argument("--view-sizes", default="512,224,64")
    ap.add_argument("--variants", default="clean,aug-0")
    ap.add_argument("--repeats", type=int, default=7, help="best of N per figure")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = args.variants.split(",")
    prepare_variants(variants)
    print(f"# {platform.processor() or platform.machine()}, 1 thread, best of {args.repeats}")
    print(
        f"{'image':>10} {'view':>5} {'variant':>8} {'decoded':>10} "
        f"{'full ms':>8} {'draft ms':>8} {'speed-up':>8} {'view diff':>9}"
    )
    for size in args.sizes.split(","):
        w, h = (int(x) for x in size.split("x"))
        buf = io.BytesIO()
        render_scene(np.random.default_rng(0), w, h, roadwork=True).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        for view_size in (int(v) for v in args.view_sizes.split(",")):
            side = draft_side(view_size)
            decoded = decode_image(data, MAX_PIXELS, side).size
            for variant in variants:
                views_of(data, variant, view_size, side)  # warm caches and recipes
                full = seconds(data, variant, view_size, None, args.repeats)
                draft = seconds(data, variant, view_size, side, args.repeats)
                diff = np.abs(
                    views_of(data, variant, view_size, side).astype(np.int16)
                    - views_of(data, variant, view_size, None).astype(np.int16)
                ).mean()
                print(
                    f"{size:>10} {view_size:>5} {variant:>8} {decoded[0]:>4}x{decoded[1]:<5} "
                    f"{full * 1e3:>8.1f} {draft * 1e3:>8.1f} {full / draft:>7.2f}x {diff:>9.2f}"
                )


if __name__ == "__main__":
    main()
