"""Zero-shot image-text retrieval with a CLIP model from transformers: the protocol check of the retrieval tables.

LOUPE reports zero-shot retrieval on the MSCOCO 5K and Flickr30K 1K test splits next to CLIP's (Radford et al. 2021,
Table 13). The suite cannot reproduce LOUPE's 240M-pair pre-training, but it can check its evaluation protocol by
reproducing the CLIP rows with public CLIP weights: ``python -m experiments test --config
configs/loupe/zeroshot_clip_coco.yaml`` (the model id or a local folder in ``name_or_path``; nothing downloads when
the weights are in the Hugging Face cache or a folder). Embeddings are CLIP's projected, l2-normalised image and text
features; the metric is the suite's :class:`ImageTextRetrieval` (R@1/5/10 both ways, RSUM).

``caption_prefix`` is prepended to every caption (empty by default; the CLIP paper's exact retrieval prompt is
unverified, docs/loupe.md). Images should be normalised with CLIP's mean and std (the configs set them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.base import SuiteModule
from lightning_modules.retrieval.metrics import ImageTextRetrieval
from lightning_modules.retrieval.module import RetrievalEvaluation
from lightning_modules.retrieval.text import CaptionTokenizer, check_vocabulary
from suite_base.errors import ConfigError


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output from ``get_*_features`` (projected features in ``pooler_output``);
    older versions return the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipZeroShotRetrieval(RetrievalEvaluation, SuiteModule):
    """Evaluate a pretrained CLIP (``transformers.CLIPModel``) on image-text retrieval, without training.

    Args:
        name_or_path: hub id (``openai/clip-vit-large-patch14-336`` for the CLIP paper's retrieval rows) or folder.
        config: a ``CLIPConfig`` keyword dict for a randomly initialised model (tests); ignored with ``name_or_path``.
        max_text_length: caption tokens (CLIP's context is 77).
        caption_prefix: text put before every caption.
        ranked_pictures: captions drawn with their nearest images of the first validation and test batch
            (:meth:`~lightning_modules.retrieval.module.RetrievalEvaluation.draw_ranked_images`; 0: none).
    """

    monitor = "val/rsum"
    monitor_mode = "max"

    def __init__(
        self,
        name_or_path: str | None = None,
        config: dict | None = None,
        max_text_length: int = 77,
        caption_prefix: str = "",
        ranked_pictures: int = 4,
    ) -> None:
        super().__init__(None)
        self.save_hyperparameters()
        self.ranked_pictures = ranked_pictures
        from transformers import AutoTokenizer, CLIPConfig, CLIPModel

        if name_or_path:
            try:
                self.clip = CLIPModel.from_pretrained(name_or_path)
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            except OSError as err:
                raise ConfigError(
                    f"cannot load CLIP '{name_or_path}' ({err}); give a local folder or a hub id in the Hugging Face "
                    f"cache (model.init_args.name_or_path)"
                ) from err
        elif config is not None:
            from lightning_modules.retrieval.text import load_text_encoder

            self.clip = CLIPModel(CLIPConfig(**config))
            _, tokenizer = load_text_encoder("minilm-offline")  # a random model: any tokenizer of its vocabulary size
        else:
            raise ConfigError("ClipZeroShotRetrieval needs model.init_args.name_or_path (or a config for tests)")
        check_vocabulary(tokenizer, self.clip.text_model, name_or_path or "config")
        self.clip.requires_grad_(False).eval()
        self.tokenize = CaptionTokenizer(tokenizer, max_text_length)
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
