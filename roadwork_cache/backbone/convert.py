"""DINOv3 weights in the transformers and Meta layouts, mapped onto timm's (`Eva`) layout.

Every backbone runs as timm's DINOv3 model, whatever file its weights came in: one
implementation for `extract`, `predict` and the exported detector (timm 1.0.22 in the
subnet's environment has it; transformers 4.45 there has no DINOv3). The maps are pure
functions of the tensors: no transformers import, nothing printed, and a tensor that has
no place in the target layout keeps its name, so the strict load refuses it (never drops
it), naming it beside whatever is missing.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from roadwork_cache.runtime.errors import UserError

_PATCH = "embeddings.patch_embeddings.weight"
_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "gamma_1",
    "layer_scale2.lambda1": "gamma_2",
}
_MLP = {"up_proj": "fc1", "down_proj": "fc2"}
_GATED_MLP = {"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"}  # timm's SwiGLU


def is_transformers_layout(state: dict[str, Any]) -> bool:
    return any(k.endswith(_PATCH) for k in state)


def is_meta_layout(state: dict[str, Any]) -> bool:
    return "storage_tokens" in state or any(".ls1.gamma" in k for k in state)


def _zero(t: torch.Tensor | None) -> bool:
    return t is None or not bool(torch.count_nonzero(t))


def transformers_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `DINOv3ViTModel` state dict (saved `layer.N.` or in-memory `model.layer.N.` names,
    under any common prefix) -> timm names: q, k, v fused into `attn.qkv`, their biases as
    `attn.q_bias` / `attn.v_bias` (timm's key bias is fixed at 0, so a non-zero one is
    refused). A tensor without a place keeps its own name, so the strict load names it as
    unexpected beside whatever is missing, in one sentence."""
    anchors = [k for k in state if k.endswith(_PATCH)]
    if len(anchors) != 1:
        raise UserError(f"expected one '*{_PATCH}' tensor, found {len(anchors)}")
    # The prefix a wrapper adds (`backbone.`, `dinov3.`): every tensor must carry it, so
    # stripping it is unambiguous; a tensor outside it stays unplaced.
    prefix = anchors[0][: -len(_PATCH)]
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    unplaced = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix) :]
        if m := _LAYER.match(k):
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif k == _PATCH:
            out["patch_embed.proj.weight"] = value
        elif k == "embeddings.patch_embeddings.bias":
            out["patch_embed.proj.bias"] = value
        elif k == "embeddings.cls_token":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif k == "embeddings.register_tokens":
            if value.numel():
                out["reg_token"] = value.reshape(1, -1, value.shape[-1])
        elif k in ("embeddings.mask_token", "rope_embeddings.inv_freq"):
            continue  # pretraining only / recomputed from the config
        elif k in ("norm.weight", "norm.bias"):
            out[k] = value
        else:
            unplaced[key] = value
    for i, parts in sorted(blocks.items()):
        b = f"blocks.{i}."
        parts = dict(parts)
        for src, dst in _BLOCK_RENAMES.items():
            if src in parts:
                out[b + dst] = parts.pop(src)
        names = [f"attention.{n}_proj.weight" for n in "qkv"]
        if all(n in parts for n in names):  # else they stay unplaced and qkv is missing
            out[b + "attn.qkv.weight"] = torch.cat([parts.pop(n) for n in names], dim=0)
        k_bias = parts.pop("attention.k_proj.bias", None)
        if not _zero(k_bias):
            raise UserError(f"layer {i} has a non-zero key bias, which DINOv3 does not have")
        for name in "qv":
            bias = parts.pop(f"attention.{name}_proj.bias", None)
            if bias is not None:
                out[f"{b}attn.{name}_bias"] = bias
        mlp = _GATED_MLP if "mlp.gate_proj.weight" in parts else _MLP
        for src, dst in mlp.items():
            for suffix in ("weight", "bias"):
                if f"mlp.{src}.{suffix}" in parts:
                    out[f"{b}mlp.{dst}.{suffix}"] = parts.pop(f"mlp.{src}.{suffix}")
        unplaced.update({f"{prefix}layer.{i}.{rest}": v for rest, v in sorted(parts.items())})
    clash = sorted(set(unplaced) & set(out))
    if clash:  # cannot happen with DINOv3 names; a guard, not a case
        raise UserError(f"tensor {clash[0]} of the checkpoint is both timm- and DINOv3-named")
    return {**out, **unplaced}


def meta_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's DINOv3 `.pth` names -> timm names: `storage_tokens` are registers, `ls1/ls2`
    layer scales, a fused `qkv.bias` splits into q and v biases (its key third must be 0)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k == "mask_token" or k.endswith((".periods", ".bias_mask")) or k.startswith("rope"):
            continue  # pretraining only, or recomputed
        if k.endswith("qkv.bias"):
            q, key_bias, vb = v.chunk(3, dim=-1)
            if not _zero(key_bias):
                raise UserError(f"{k} has a non-zero key third, which timm's DINOv3 fixes at 0")
            out[k.replace("qkv.bias", "q_bias")] = q
            out[k.replace("qkv.bias", "v_bias")] = vb
            continue
        k = k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
        out[k.replace("storage_tokens", "reg_token")] = v
    return out


def has_qv_bias(state: dict[str, torch.Tensor]) -> bool:
    """Whether timm-named weights carry query / value biases (timm's `_qkvb` models)."""
    return any(k.endswith(("attn.q_bias", "attn.v_bias")) for k in state)


def timm_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """timm `create_model` kwargs of the same architecture as a transformers DINOv3 config."""
    dim, hidden = int(config["hidden_size"]), int(config["intermediate_size"])
    gated = bool(config.get("use_gated_mlp", False))
    act = config.get("hidden_act", "gelu")
    if act != ("silu" if gated else "gelu"):
        raise UserError(
            f"a {'gated' if gated else 'plain'} MLP with hidden_act {act!r} is not "
            "a DINOv3 architecture timm has"
        )
    if bool(config.get("key_bias", False)) or float(config.get("layer_norm_eps", 1e-5)) != 1e-5:
        raise UserError("a key bias or a LayerNorm eps other than 1e-5 is not DINOv3's")
    return {
        "embed_dim": dim,
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "mlp_ratio": hidden / dim,
        "qkv_bias": bool(config.get("query_bias", True) or config.get("value_bias", True)),
        "num_reg_tokens": int(config.get("num_register_tokens", 0)),
        "rope_temperature": float(config.get("rope_theta", 100.0)),
        "init_values": float(config.get("layerscale_value", 1.0)),
        "swiglu_mlp": gated,
        "swiglu_align_to": 8 if gated else 0,
    }
