"""Zero-shot image-text retrieval with a CLIP model from transformers: the protocol check of the retrieval tables.

LOUPE reports zero-shot retrieval on the MSCOCO 5K and Flickr30K 1K test splits next to CLIP's (Radford et al. 2021,
Table 13). The suite cannot reproduce LOUPE's 240M-pair pre-training, but it can check its evaluation protocol by
reproducing the CLIP rows with public CLIP weights: ``python -m experiments test --config
configs/loupe/zeroshot_clip_coco.yaml`` (the model id or a local folder in
``model.init_args.clip.init_args.name_or_path``, the :func:`pretrained_clip` network the module is given; nothing
downloads when the weights are in the Hugging Face cache or a folder). Embeddings are CLIP's projected,
l2-normalised image and text features; the metric is the suite's :class:`ImageTextRetrieval` (R@1/5/10 both ways, RSUM).

``caption_prefix`` is prepended to every caption (empty by default; the CLIP paper's exact retrieval prompt is
unverified, docs/loupe.md). Images should be normalised with CLIP's mean and std (the configs set them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.base import SuiteModule
from lightning_modules.retrieval.metrics import ImageTextRetrieval
from lightning_modules.retrieval.module import RetrievalEvaluation
from lightning_modules.retrieval.text import (
    CaptionTokenizer,
    caption_tokenizer_of,
    check_vocabulary,
    load_pretrained,
    load_text_encoder,
)
from suite_base.errors import ConfigError


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output from ``get_*_features`` (projected features in ``pooler_output``);
    older versions return the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def pretrained_clip(
    name_or_path: str | None = None, config: dict | None = None, max_text_length: int = 77
) -> nn.Module:
    """A ``transformers.CLIPModel`` as the injected network of :class:`ClipZeroShotRetrieval`
    (``model.init_args.clip``), carrying its tokenizer as ``caption_tokenizer`` (captions cut at ``max_text_length``
    tokens; CLIP's context is 77).

    Args:
        name_or_path: hub id (``openai/clip-vit-large-patch14-336`` for the CLIP paper's retrieval rows) or folder.
        config: a ``CLIPConfig`` keyword dict for a randomly initialised model (tests); ignored with ``name_or_path``.
    """
    from transformers import CLIPConfig, CLIPModel

    key = "model.init_args.clip.init_args.name_or_path"
    if name_or_path:
        hint = f"give a local folder or a hub id in the Hugging Face cache ({key})"
        clip, tokenizer = load_pretrained(CLIPModel, name_or_path, f"CLIP '{name_or_path}'", hint)
    elif config is not None:
        clip = CLIPModel(CLIPConfig(**config))
        _, tokenizer = load_text_encoder("minilm-offline")  # a random model: any tokenizer of its vocabulary size
    else:
        raise ConfigError(f"ClipZeroShotRetrieval's CLIP needs {key} (or a config for tests)")
    check_vocabulary(tokenizer, clip.text_model, name_or_path or "config")
    clip.caption_tokenizer = CaptionTokenizer(tokenizer, max_text_length)
    return clip


class ClipZeroShotRetrieval(RetrievalEvaluation, SuiteModule):
    """Evaluate a pretrained CLIP (``transformers.CLIPModel``) on image-text retrieval, without training.

    Args:
        clip: the CLIP model with its caption tokenizer, built by :func:`pretrained_clip`; frozen here.
        caption_prefix: text put before every caption.
        ranked_pictures: captions drawn with their nearest images of the first validation and test batch
            (:meth:`~lightning_modules.retrieval.module.RetrievalEvaluation.draw_ranked_images`; 0: none).
    """

    monitor = "val/rsum"
    monitor_mode = "max"

    def __init__(self, clip: nn.Module, *, caption_prefix: str = "", ranked_pictures: int = 4) -> None:
        super().__init__(None)
        self.save_hyperparameters_with_networks()
        self.ranked_pictures = ranked_pictures
        self.clip = clip.requires_grad_(False).eval()
        self.tokenize = caption_tokenizer_of(clip, "model.init_args.clip")
        self.prefix = caption_prefix
        self.val_metric = ImageTextRetrieval()
        self.test_metric = ImageTextRetrieval()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(_features(self.clip.get_image_features(pixel_values=images)), dim=-1)

    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        enc, _ = self.tokenize([self.prefix + c for c in captions], device=self.device)
        enc.pop("token_type_ids", None)
        return F.normalize(_features(self.clip.get_text_features(**enc)), dim=-1)

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(batch["image"]), self.encode_texts(batch["captions"])
