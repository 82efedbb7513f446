"""Text-guided editing metrics as torchmetrics ``Metric`` objects (DE-Net's evaluation code was not released).

* :class:`ManipulativePrecision`: Lightweight-GAN's (Li et al., NeurIPS 2020) manipulative precision
  ``MP = (1 - diff) x sim``, where ``diff`` is the mean L1 pixel difference between source and edited images (both in
  ``[0, 1]``, averaged over pixels, channels and images) and ``sim`` the mean cosine similarity between each edited
  image and its target text in a joint embedding space (DAMSM's in DE-Net's ``mp``, CLIP's in ``mp_c``). MP is
  computed from the two dataset means, as the definition reads; the per-pair product is not averaged instead.
  DE-Net's ``train.py`` also logs ``mse`` and ``rmp`` (and ``rmp_c`` beside ``mp_c``); the code that computes them
  (``lib/modules.py``) was never released. Our reading [unverified]: ``test()`` returns one ``sim`` (one ``c_sim``)
  shared by ``mp`` and ``rmp`` (``mp_c`` and ``rmp_c``), and ``mse`` is the only other pixel term it returns, so
  ``rmp`` swaps the L1 ``diff`` for the root-mean-square error: ``rMP = (1 - sqrt(mse)) x sim``, with ``mse`` the
  dataset mean squared pixel difference in ``[0, 1]`` (docs/denet.md, Metrics).
* :class:`ClipEditScorer`: a frozen transformers ``CLIPModel`` (hub id in the local cache, or a folder; nothing
  downloads) that embeds edited images and their target texts for the CLIP-space ``c_sim`` / ``mp_c`` / ``rmp_c``.
* :func:`fid_metric`: torchmetrics' ``FrechetInceptionDistance`` with a configurable feature extractor: ``inception``
  is torchmetrics' InceptionV3 pool3 (2048-d; needs ``torch-fidelity`` and its weights, on a cluster); any other name
  is a frozen timm backbone (pooled features; ``pretrained`` may name a local weights file), which runs offline.
  FID from a non-Inception extractor is not comparable with published FIDs and is labelled with its backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from suite_base.errors import ConfigError


class ManipulativePrecision(Metric):
    """``update(source, edited, image_emb, text_emb)``; :meth:`compute` -> ``{"diff", "mse", "sim", "mp", "rmp"}``
    (``mp = (1 - diff) sim``, ``rmp = (1 - sqrt(mse)) sim``: module docstring).

    ``source``/``edited`` ``[B, 3, H, W]`` in ``[0, 1]``; ``image_emb`` ``[B, D]`` (of the edited images) and
    ``text_emb`` ``[B, D]`` (their target texts) in the same embedding space.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("diff_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("mse_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sim_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, source: Tensor, edited: Tensor, image_emb: Tensor, text_emb: Tensor) -> None:
        if source.shape != edited.shape or source.ndim != 4:
            raise ValueError(f"source and edited must be [B, 3, H, W] of one shape, got {source.shape} and "
                             f"{edited.shape}")  # fmt: skip
        if image_emb.shape != text_emb.shape or image_emb.shape[0] != source.shape[0]:
            raise ValueError(f"one image and one text embedding per pair: {image_emb.shape} vs {text_emb.shape}")
        delta = edited.double() - source.double()
        self.diff_sum += delta.abs().mean(dim=(1, 2, 3)).sum()
        self.mse_sum += delta.square().mean(dim=(1, 2, 3)).sum()
        self.sim_sum += F.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1).sum()
        self.count += source.shape[0]

    def compute(self) -> dict[str, Tensor]:
        diff, mse, sim = self.diff_sum / self.count, self.mse_sum / self.count, self.sim_sum / self.count
        out = {"diff": diff, "mse": mse, "sim": sim, "mp": (1 - diff) * sim, "rmp": (1 - mse.sqrt()) * sim}
        return {k: v.float() for k, v in out.items()}


class ClipEditScorer(nn.Module):
    """Frozen CLIP embeddings for editing metrics: ``encode_images(images [B, 3, H, W] in [0, 1]) -> [B, D]`` and
    ``encode_texts(list[str]) -> [B, D]`` (CLIP's projected features; cosine-compared by the metric).

    Args:
        name_or_path: a hub id already in the Hugging Face cache (``openai/clip-vit-base-patch32``) or a folder with
            the model and its tokenizer; loaded with ``local_files_only`` (nothing downloads at run time).
        model, tokenizer: a ready ``CLIPModel`` and its tokenizer instead (tests build a tiny random one).
        max_length: text tokens (CLIP's context is 77).

    Images are resized (bicubic) to the vision tower's side and normalised with the processor's mean / std (OpenAI
    CLIP's when the folder has no processor config); the edited images are square, so this equals CLIP's resize +
    centre crop.
    """

    def __init__(self, name_or_path: str | None = None, model=None, tokenizer=None, max_length: int = 77) -> None:
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel
        from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        from lightning_modules.retrieval.text import CaptionTokenizer, check_vocabulary

        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        if model is None:
            if not name_or_path:
                raise ConfigError("ClipEditScorer needs a CLIP model id or folder (model.init_args.clip_model)")
            try:
                model = CLIPModel.from_pretrained(name_or_path, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
            except OSError as err:
                raise ConfigError(
                    f"cannot load CLIP '{name_or_path}' from local files ({err}): give a folder holding the model "
                    f"and its tokenizer, or download the hub id once (huggingface-cli download {name_or_path}) "
                    "before the run (model.init_args.clip_model)"
                ) from err
            mean, std = _processor_mean_std(name_or_path, mean, std)
        elif tokenizer is None:
            raise ConfigError("ClipEditScorer got a CLIP model without its tokenizer")
        check_vocabulary(tokenizer, model.text_model, name_or_path or "the given CLIP model")
        self.clip = model.requires_grad_(False).eval()
        self.tokenize = CaptionTokenizer(tokenizer, max_length)
        self.size = model.config.vision_config.image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        from lightning_modules.retrieval.clip import _features

        x = images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        pixels = ((x.clamp(0, 1) - self.mean) / self.std).to(self.clip.dtype)
        return _features(self.clip.get_image_features(pixel_values=pixels)).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        from lightning_modules.retrieval.clip import _features

        enc, _ = self.tokenize(texts, device=self.mean.device)
        enc.pop("token_type_ids", None)
        return _features(self.clip.get_text_features(**enc)).float()


def _processor_mean_std(name_or_path: str, mean, std):
    """The image processor's normalisation in ``name_or_path`` (local files), else ``(mean, std)``."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        return mean, std
    return getattr(processor, "image_mean", mean), getattr(processor, "image_std", std)


class FrozenFeatures(nn.Module):
    """A frozen timm backbone as an FID feature extractor: ``[B, 3, H, W]`` in ``[0, 1]`` -> pooled ``[B, D]``."""

    def __init__(self, name: str = "resnet18", pretrained: str | bool = False, input_size: int | None = None) -> None:
        super().__init__()
        from lightning_modules.backbones import create_timm_pretrained

        self.net = create_timm_pretrained(name, pretrained, num_classes=0).eval().requires_grad_(False)
        cfg = self.net.pretrained_cfg
        self.size = input_size or cfg.get("input_size", (3, 224, 224))[-1]
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        self.num_features = self.net.num_features

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


def fid_metric(backbone: str = "inception", pretrained: str | bool = False, input_size: int | None = None):
    """FID on images in ``[0, 1]`` (``normalize=True``) with ``backbone``'s features (module docstring)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if backbone == "inception":
        import importlib.util

        if importlib.util.find_spec("torch_fidelity") is None:
            raise ConfigError(
                "model.init_args.fid_backbone: inception is torchmetrics' InceptionV3, which needs the torch-fidelity "
                "package (pip install -e '.[fid]'; its weights download once); or name a timm backbone (e.g. "
                "inception_v3, with fid_pretrained: a local weights file)"
            )
        return FrechetInceptionDistance(feature=2048, normalize=True)
    return FrechetInceptionDistance(feature=FrozenFeatures(backbone, pretrained, input_size), normalize=True)
