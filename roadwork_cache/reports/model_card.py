"""The README.md model card of an exported model: what it is, what it was trained on, how it
scores (the model folder's own metrics.json rows), how to run it, and the licences."""

from __future__ import annotations

import math
from typing import Any

from roadwork_cache.inference.export_format import ExportConfig

DINOV3_LICENSE = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"  # Meta's page
METRIC_COLUMNS = (
    ("mcc", "MCC", "{:+.3f}"),
    ("accuracy", "acc", "{:.3f}"),
    ("precision", "prec", "{:.3f}"),
    ("recall", "rec", "{:.3f}"),
    ("f1", "F1", "{:.3f}"),
    ("auc", "AUC", "{:.3f}"),
    ("reward", "reward", "{:.3f}"),
    ("n", "n", "{}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


# The sets whose rows no part of the model was fitted, tuned or stopped on: `val` chose the
# epoch and the threshold, an ensemble's `oof` fitted its combination.
HELD_OUT_SETS = ("test",)


def held_out_sets(seen: Any) -> set[str]:
    """HELD_OUT_SETS less any split the model's `seen` record lists (e.g. `test` after DoRA
    adapted on it)."""
    splits = (seen.get("splits") or []) if isinstance(seen, dict) else []
    return set(HELD_OUT_SETS) - {str(s) for s in splits}


def deployed_rows(
    metrics: dict[str, Any], kind: str, seen: Any = None
) -> tuple[list[dict[str, Any]], bool]:
    """The held-out rows of what is deployed: a run's head at its tuned (folded) threshold;
    every row of an ensemble (its members beside the combination). Also whether there were
    rows of what is deployed at all, held-out or not."""
    rows = [r for r in metrics.get("rows") or [] if isinstance(r, dict)]
    if kind == "train-head":
        rows = [r for r in rows if r.get("model") == "head" and r.get("threshold_kind") == "tuned"]
    held_out = held_out_sets(seen)
    return [r for r in rows if r.get("set") in held_out], bool(rows)


def metrics_markdown(metrics: dict[str, Any] | None, kind: str, seen: Any = None) -> list[str]:
    if metrics is None:
        return ["The model folder holds no `metrics.json`: there are no metrics to report."]
    rows, any_rows = deployed_rows(metrics, kind, seen)
    if not rows:
        if any_rows:
            return [
                "No held-out score exists: every row of the model folder's `metrics.json` "
                "is of a set it was fitted, tuned or stopped on."
            ]
        return ["The model folder's `metrics.json` holds no metric rows."]
    keys = [k for k in ("model", "set", "variant", "metadata") if any(k in r for r in rows)]
    metric_cols = [c for c in METRIC_COLUMNS if any(c[0] in r for r in rows)]
    extra = any("expected_reward" in r for r in rows)
    head = keys + [c[1] for c in metric_cols] + (["expected reward"] if extra else [])
    out = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" if h in keys else "---:" for h in head) + " |",
    ]
    for r in rows:
        cells = [str(r.get(k, "-")) for k in keys]
        cells += [_cell(r.get(key), fmt) for key, _, fmt in metric_cols]
        if extra:
            cells.append(_reward_text(r.get("expected_reward")))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    variants = {r.get("variant") for r in rows}
    metadata = {r.get("metadata") for r in rows}
    if "natix" not in variants:
        out.append("- No `natix` rows: the cache had no validator-like `natix-K` variants.")
    else:
        out.append(
            "- `natix` rows pool the validator-like challenges (`natix-K`: the four "
            "augmentation levels down to the 224 px JPEG a miner is sent)."
        )
    if "none" in metadata:
        out.append(
            "- `metadata none` rows have every metadata field empty: what a validator sends."
        )
    else:
        out.append("- No metadata-empty rows: these numbers assume metadata a miner never gets.")
    expected = metrics.get("expected_reward")
    if expected is not None:
        out.append(f"- Expected reward in the deployment setting: {_reward_text(expected)}.")
    elif not extra:
        out.append("- No expected reward: the metrics were written before it was computed.")
    if metrics.get("random_init_backbone"):
        out.append(
            "- The backbone had random weights (tiny preset): these numbers measure the "
            "machinery, not quality."
        )
    return out


def _reward_text(value: Any) -> str:
    if isinstance(value, dict):
        parts = [f"{k} {_cell(v, '{:.3f}')}" for k, v in value.items() if not isinstance(v, dict)]
        return ", ".join(parts) or "-"
    return _cell(value, "{:.3f}")


def _basename(path: Any) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def seen_text(seen: Any) -> str:
    """The `seen` record (head_folder.seen_record) without local paths, which are not
    published: the cache folder's name, its split names, the target's name and rows."""
    if not isinstance(seen, dict) or not seen:
        return ""
    parts = []
    if seen.get("cache"):
        parts.append(f"cache `{_basename(seen['cache'])}`")
    splits = seen.get("splits") or []
    if splits:
        parts.append(f"splits {', '.join(map(str, splits))}")
    target = seen.get("target")
    if isinstance(target, dict):
        rows = f", {target['rows']} rows" if target.get("rows") is not None else ""
        parts.append(f"target `{_basename(target.get('cache', '?'))}`{rows}")
    return "; ".join(parts)


def training_markdown(record: dict[str, Any]) -> list[str]:
    """What the model's own record says about its data (the images stay with their owner)."""
    fingerprint = record.get("cache_fingerprint") or {}
    cache = str(record.get("cache") or fingerprint.get("path") or "?").rstrip("/")
    out = [
        f"- Features: a roadwork-cache feature cache (`{cache.rsplit('/', 1)[-1]}`"
        + (f", {fingerprint['n_rows']} images" if fingerprint.get("n_rows") else "")
        + "), made from the NATIX StreetVision roadwork data "
        "(`natix-network-org/roadwork`) or images laid out like it; splits grouped by video.",
    ]
    variants = record.get("variants")
    if isinstance(variants, dict):
        variants = sorted({v for names in variants.values() for v in names})
    if variants:
        out.append(f"- Cached variants trained on: {', '.join(map(str, variants))}.")
    seen = seen_text(record.get("seen"))
    if seen:
        out.append(f"- Labelled rows seen: {seen}.")
    leaky = record.get("leaky_fields") or []
    if leaky:
        out.append(
            f"- Metadata fields dropped as label leaks: {', '.join(leaky)} (the deployed "
            "model gets no metadata at all)."
        )
    return out


def _origin(backbone: dict[str, Any]) -> str:
    kind = backbone.get("format")
    if kind in ("transformers", "meta"):
        return f", converted from the {kind} format of {backbone.get('weights_name')}"
    if kind == "random":
        return " (the tiny preset's random weights)"
    return f", from {backbone.get('weights_name')}"


def model_card(
    config: ExportConfig,
    card: dict[str, Any],
    record: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> str:
    """README.md of the exported folder, with Hugging Face's front matter."""
    b = config.backbone
    random_init = bool(b.get("random_init"))
    licence = (
        ["license: mit"]
        if random_init
        else ["license: other", "license_name: dinov3-license", f"license_link: {DINOV3_LICENSE}"]
    )
    timm_name = b["timm"].get("model_name")
    if config.kind == "ensemble":
        members = config.members or []
        what = f"an ensemble of {len(members)} members ({len(config.heads)} heads)"
    else:
        what = "one trained head"
    tta = config.tta
    tta_text = f"{len(tta['variants'])} variants ({', '.join(tta['variants'])}), combined by " + (
        "FOODS" if tta["combine"] == "foods" else "their mean"
    )
    lines = [
        "---",
        *licence,
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags: [roadwork, natix, streetvision, dinov3]",
        "---",
        "",
        f"# {card['model_name']} {card['version']}",
        "",
        card["description"],
        "",
        "P(roadwork) of a street image, for a NATIX StreetVision miner: the frozen DINOv3 "
        f"`{b.get('preset')}` backbone (timm `{timm_name}`, {b['feature_dim']}-d "
        f"`{b['pool']}` features of 12 views at {b['view_size']} px) and {what}, exported by "
        f"roadwork-cache {config.source.get('tool_version')}. The threshold tuned on "
        f"validation ({config.threshold:.4f}) is folded in: 0.5 is the cut.",
        "",
        "## Use",
        "",
        "```python",
        "from PIL import Image",
        "from detector import RoadworkDetector",
        "",
        "detector = RoadworkDetector()            # this folder; CUDA when there is one",
        "p = detector(Image.open('street.jpg'))  # float in [0, 1]; roadwork when p > 0.5",
        "```",
        "",
        "`detector.py` needs only torch, timm (>= 1.0.22), safetensors, numpy and pillow; it "
        "runs in the subnet's environment (Python 3.11, torch 2.6.0, timm 1.0.22). It "
        "computes in bf16 on GPUs of compute capability 8 or more, fp16 on older ones, fp32 "
        "on a CPU.",
        "",
        f"- TTA: {'on' if tta.get('enabled') else 'off'} by default; {tta_text}. "
        "`RoadworkDetector(tta=False)` scores the clean image only (fastest), `tta=True` "
        "every variant, `max_variants=N` the first N.",
        "- `roadwork export --check DIR` prints the latency (p50, p95), device and dtype.",
        "",
        "## Training data",
        "",
        *training_markdown(record),
        "",
        "## Metrics",
        "",
        *metrics_markdown(metrics, config.kind, record.get("seen")),
        "",
        "## Files",
        "",
        "| file | content |",
        "| --- | --- |",
        f"| `backbone.safetensors` | the backbone in timm's layout{_origin(b)} |",
        "| `heads.safetensors` | the head weights"
        + (" and the FOODS statistics |" if tta["combine"] == "foods" else " |"),
        "| `config.json` | architecture, combination, folded threshold, TTA / FOODS, views, "
        "sha256 |",
        "| `detector.py` | `RoadworkDetector` |",
        "| `model_card.json` | the subnet's model card |",
        "| `miner/` | the miner's detector class and YAML (below) |",
        "",
        "## In a StreetVision miner",
        "",
        "Copy `miner/roadwork_dinov3_detector.py` into the subnet's `base_miner/detectors/` "
        "and import it in that folder's `__init__.py`; copy `miner/roadwork_dinov3.yaml` into "
        "`base_miner/detectors/configs/` with `hf_repo` naming this repository; set "
        "`IMAGE_DETECTOR=ROADWORK_DINOV3`, `IMAGE_DETECTOR_CONFIG=roadwork_dinov3.yaml` and "
        "`IMAGE_DETECTOR_DEVICE=cuda` in `miner.env`.",
        "",
        "## License",
        "",
    ]
    if random_init:
        lines.append(
            "The backbone is the `tiny` preset: random weights from a fixed seed, no "
            "third-party weights. It is for tests and demonstrations only: its answers "
            "carry no information about roadwork."
        )
    else:
        lines.append(
            "The backbone weights are Meta's DINOv3, released under the DINOv3 License "
            f"({DINOV3_LICENSE}); using or redistributing this model means accepting it. "
            "The head weights and detector.py are from roadwork-cache (MIT)."
        )
    return "\n".join(lines) + "\n"
