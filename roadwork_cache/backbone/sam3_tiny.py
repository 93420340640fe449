"""A tiny random-weight SAM 3 written as a real transformers folder (about 0.9 MB), for the
tests and the benchmark: nothing is downloaded. Like the `tiny` backbone it demonstrates the
machinery, not segmentation: its queries all score about 0.25, so it finds instances only
with a score threshold below that.

The tokenizer is a byte-level BPE trained here on the prompts' words with CLIP's exact
normaliser, pre-tokeniser and word-end suffix, wrapped in transformers' CLIPTokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from roadwork_cache.backbone.segmenter import DEFAULT_PROMPTS, TEXT_MAX_TOKENS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PATCH = 14  # SAM 3's ViT patch


def tiny_clip_tokenizer(words: Sequence[str]):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    bpe = Tokenizer(
        BPE(unk_token=EOS, continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
    )
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    clip_split = (
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
        r"|[^\s\p{L}\p{N}]+"
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(clip_split), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=1000,
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(list(words), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for ch in sorted(alphabet):  # every byte also as a word end, so no word maps to <unk>
        vocab.setdefault(ch + "</w>", len(vocab))
    # CLIPTokenizer hands merges to tokenizers' BPE, which wants (left, right) pairs.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(
        vocab=vocab, merges=merges, unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS
    )


def tiny_sam3_config(vocab_size: int, bos_id: int, eos_id: int, image_size: int = 112):
    from transformers import Sam3Config, Sam3ViTConfig

    grid = image_size // PATCH
    d = 32  # DETR / FPN / mask width (GroupNorm(8, d) needs d % 8 == 0)
    detr = dict(hidden_size=d, num_layers=1, num_attention_heads=4, intermediate_size=64)
    return Sam3Config(
        vision_config=dict(
            # a backbone_config dict needs model_type; the config object does not
            backbone_config=Sam3ViTConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=image_size,
                patch_size=PATCH,
                window_size=grid // 2,
                global_attn_indexes=[1],
                pretrain_image_size=image_size // 2,
            ),
            fpn_hidden_size=d,
            backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        ),
        # a text_config dict is built on CLIPTextConfig's defaults
        text_config=dict(
            model_type="clip_text_model",
            hidden_act="gelu",
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=TEXT_MAX_TOKENS,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        ),
        geometry_encoder_config=dict(detr, roi_size=3),
        detr_encoder_config=dict(detr),
        detr_decoder_config=dict(detr, num_queries=16),
        mask_decoder_config=dict(hidden_size=d, num_attention_heads=4),
    )


def sam3_processor(tokenizer, image_size: int, mask_side: int):
    from transformers import Sam3ImageProcessor, Sam3Processor

    images = Sam3ImageProcessor(
        size={"height": image_size, "width": image_size},
        mask_size={"height": mask_side, "width": mask_side},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Sam3Processor(image_processor=images, tokenizer=tokenizer, target_size=image_size)


def write_tiny_sam3(
    folder: str | Path,
    seed: int = 0,
    image_size: int = 112,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
) -> Path:
    """Write config.json, model.safetensors, the processor and tokenizer into `folder`."""
    from transformers import Sam3Model
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer(sorted({w for p in prompts for w in p.split()}))
    config = tiny_sam3_config(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, image_size
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Sam3Model(config).eval()
    model.save_pretrained(folder)
    mask_side = (image_size // PATCH) * 4  # pred_masks come from the 4x FPN level
    sam3_processor(tokenizer, image_size, mask_side).save_pretrained(folder)
    return folder
