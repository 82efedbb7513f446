"""Frozen CLIP vision tower that produces per-patch regression targets for masked image modeling.

This is iTPN's CLIP target (Tian et al., "Integrally Pre-Trained Transformer Pyramid Networks", CVPR 2023, arXiv
2211.12735; ``itpn_clip/clip/create_clip.py`` and its pre-training model in ``sunsmarterjie/iTPN``): the patch tokens of
the CLIP image encoder after ``ln_post`` and the projection ``proj``, followed by a LayerNorm without affine
parameters. It is also MVP's target (Wei et al., "MVP: Multimodality-guided Visual Pre-training", ECCV 2022, arXiv
2203.05175): the patch features of the CLIP ViT-B/16 image encoder.

The tower is Hugging Face ``transformers.CLIPVisionModelWithProjection``, whose ``vision_model.post_layernorm`` and
``visual_projection`` are OpenAI CLIP's ``ln_post`` and ``proj``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torch import Tensor, nn

from suite_base.errors import ConfigError

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipTeacher", "none_if_null"]

CLIP_MEAN, CLIP_STD = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # timm's constants (OpenAI CLIP preprocessing)


def none_if_null(value: str | None) -> str | None:
    """``None`` for a command line's ``None`` / ``null`` / empty string (``--...name_or_path null`` can arrive as the
    string), else ``value``."""
    return None if isinstance(value, str) and value.strip() in ("None", "null", "") else value


class ClipTeacher(nn.Module):
    """Frozen CLIP image encoder giving LayerNorm-ed patch features ``[B, grid * grid, out_dim]`` (iTPN / MVP target).

    Built from:

    * ``name_or_path``: a Hugging Face hub id (e.g. ``openai/clip-vit-base-patch16``, 512-d; ``openai/clip-vit-large-
      patch14``, 768-d) or a local folder, loaded with ``from_pretrained`` in float32; when it is given, ``config``
      is not used;
    * else ``config``: keyword arguments of ``transformers.CLIPVisionConfig`` for a randomly initialised tower (tests,
      smoke runs; ``--model.init_args.teacher.init_args.name_or_path null`` switches a config to it). Its weights are
      drawn from the CPU generator seeded with ``seed`` inside ``torch.random.fork_rng``, so the same config and seed
      always give the same teacher and the caller's random state is untouched.

    The module is frozen (``requires_grad=False``) and stays in eval mode whatever ``train()`` is asked.

    Input scaling (``forward`` takes ``[B, 3, H, W]`` images in ``[0, 1]``, un-normalised):

    * ``"beit"`` (default, faithful): the iTPN / BEiT-v2 code's ``ScalingLayerForClip``, which expects inputs in
      ``[-1, 1]`` and computes ``((x + 1) * 127.5).clamp(0, 255) / 255`` before the CLIP mean/std normalisation. Fed
      ``[0, 1]`` images, as in those repositories, it maps them to ``[0.5, 1]``: a quirk inherited from BEiT-v2 that the
      published results were trained with, hence kept by default.
    * ``"clip"``: the corrected version, plain CLIP normalisation of the ``[0, 1]`` input.

    Args:
        name_or_path: hub id or local folder of a CLIP checkpoint.
        config: ``CLIPVisionConfig`` keyword arguments for a random tower.
        teacher_dim: expected feature width; must equal the checkpoint's ``projection_dim``.
        image_size: resolution the tower runs at; inputs of another size are resized bicubically.
        input_scaling: ``"beit"`` or ``"clip"`` (see above).
        seed: seed of the random initialisation (``config`` only).
        toy_data_root: toy scale only: the toy shapes a stand-in teacher at ``name_or_path`` is trained on. This class
            only loads the folder; :class:`experiments.toy_teacher.ToyClipTeacher` (the toy configs' class_path)
            writes it first when it is missing.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        teacher_dim: int = 512,
        image_size: int = 224,
        input_scaling: Literal["beit", "clip"] = "beit",
        seed: int = 0,
        toy_data_root: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        name_or_path, toy_data_root = (none_if_null(value) for value in (name_or_path, toy_data_root))
        if name_or_path is not None:
            config = None
        elif config is None:
            raise ConfigError(
                "ClipTeacher needs name_or_path (a CLIP checkpoint, e.g. openai/clip-vit-base-patch16) or config "
                "(CLIPVisionConfig keyword arguments for a random tower); both are null"
            )
        self.toy_data_root = toy_data_root
        if input_scaling not in ("beit", "clip"):
            raise ConfigError(
                f"input_scaling must be 'beit' (iTPN/BEiT-v2 code) or 'clip' (plain CLIP normalisation); "
                f"got {input_scaling!r}"
            )
        if name_or_path is not None:
            if toy_data_root is not None and not Path(name_or_path).exists():
                raise ConfigError(
                    f"the toy CLIP teacher {name_or_path} is not written yet; build the teacher with class_path "
                    "experiments.toy_teacher.ToyClipTeacher, which trains it on the toy shapes first"
                )
            try:
                model = CLIPVisionModelWithProjection.from_pretrained(name_or_path, dtype=torch.float32)
            except OSError as err:
                raise ConfigError(
                    f"cannot load CLIP teacher name_or_path={name_or_path!r} ({err}); pass a local folder holding a "
                    "saved CLIP model or a hub id that is in the Hugging Face cache (download it with network "
                    "access and HF_HUB_OFFLINE unset)"
                ) from err
            source = repr(name_or_path)
        else:
            try:
                vision_config = CLIPVisionConfig(**config)
            except Exception as err:  # transformers validates configs with its own (non-ValueError) exception types
                raise ConfigError(
                    f"teacher config {config} is not a valid CLIPVisionConfig ({err}); fix the config's keyword "
                    "arguments (e.g. hidden_size must be a multiple of num_attention_heads)"
                ) from err
            with torch.random.fork_rng(devices=[]), torch.device("cpu"):
                torch.random.default_generator.manual_seed(seed)
                model = CLIPVisionModelWithProjection(vision_config)
            source = f"(random, config={config})"

        model_config = model.config
        if model_config.projection_dim != teacher_dim:
            raise ConfigError(
                f"CLIP teacher {source} gives {model_config.projection_dim}-d features but teacher_dim is "
                f"{teacher_dim}; set --model.init_args.teacher.init_args.teacher_dim {model_config.projection_dim} "
                "(768 for CLIP-L, 512 for CLIP-B)"
            )
        if config is not None and image_size != model_config.image_size:
            raise ConfigError(
                f"CLIP teacher {source} was built for {model_config.image_size} px but image_size is {image_size}; "
                f"set the teacher's image_size {model_config.image_size} (inputs of any size are resized to it)"
            )
        if image_size % model_config.patch_size != 0:
            raise ConfigError(
                f"teacher image_size {image_size} is not a multiple of the CLIP patch size {model_config.patch_size}; "
                "use a CLIP config whose image_size is divisible by patch_size"
            )

        self.model = model
        self.teacher_dim = int(teacher_dim)
        self.image_size = int(image_size)
        # a pretrained tower at another resolution (CLIP-L/14 at 196 px gives the 14x14 grid of a 224-px student):
        # its position embeddings are interpolated bicubically, as the official iTPN wrapper does
        self.interpolate_pos_encoding = self.image_size != model_config.image_size
        self.input_scaling = input_scaling
        self.patch_size = int(model_config.patch_size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipTeacher:
        """Always eval mode: the teacher is frozen (dropout off), whatever the parent module asks."""
        return super().train(False)

    @property
    def out_dim(self) -> int:
        """Width of the target features (the CLIP ``projection_dim``)."""
        return int(self.model.config.projection_dim)

    @property
    def grid(self) -> int:
        """Patches per side: ``image_size // patch_size``."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Target tokens per image: ``grid * grid``."""
        return self.grid * self.grid

    def normalize(self, images: Tensor) -> Tensor:
        """Scale ``[0, 1]`` images as chosen by ``input_scaling`` and normalise with the OpenAI CLIP mean and std."""
        if self.input_scaling == "beit":
            images = ((images + 1.0) * 127.5).clamp(0.0, 255.0) / 255.0
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Targets ``[B, grid * grid, out_dim]`` (float32) for ``[B, 3, H, W]`` images in ``[0, 1]``.

        Images of another resolution are resized bicubically (antialiased) to ``image_size`` and clamped back to
        ``[0, 1]`` (bicubic overshoots). On CUDA the tower runs under bfloat16 autocast.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ClipTeacher expects images [B, 3, H, W]; got shape {tuple(images.shape)}")
        images = images.float()
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0.0, 1.0)
        pixels = self.normalize(images)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=pixels.is_cuda):
            vision = self.model.vision_model
            hidden = vision(
                pixel_values=pixels, interpolate_pos_encoding=self.interpolate_pos_encoding
            ).last_hidden_state
            tokens = vision.post_layernorm(hidden[:, 1:, :])
            features = self.model.visual_projection(tokens)
        features = features.float()
        return F.layer_norm(features, features.shape[-1:])
