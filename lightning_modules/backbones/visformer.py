"""Visformer (Chen et al., "Visformer: The Vision-friendly Transformer", ICCV 2021, arXiv 2104.12533).

timm already implements Visformer (``timm.models.visformer.Visformer``, ``visformer_tiny`` / ``visformer_small``);
we reuse that class and add what the suite needs on top of it:

* the paper's DeiT-S -> ResNet-50 transition models (Sec. 3, the official ``net1`` ... ``net7`` in
  ``danczs/Visformer/models.py``), registered in timm's registry as ``visformer_net1`` ... ``visformer_net7``;
* :func:`checkpoint_filter_fn` that loads the official repository's checkpoints into timm's layout.

Transition models (Sec. 3 of the paper; flags as in the official code):

=========  =======================================================================================
net1       DeiT-S without class token: 16x16 patch embedding, 12 attention blocks at 14x14, LayerNorm, GAP
net2       + conv stem (7x7/s2, 32 ch) and step-wise patch embedding; depth (0, 12, 0)
net3       stage-wise design: 4/4/4 blocks at 28x28 / 14x14 / 7x7
net4       + BatchNorm instead of LayerNorm
net5       + 3x3 convolution in every MLP (group 1, hidden width 5/6 * dim to keep FLOPs)
net6       - position embedding
net7       no self-attention at all, depth (6, 7, 7): the ResNet-like end point
=========  =======================================================================================

Choice recorded (docs/visformer.md): the official ``net1``-``net3`` use a ``LayerNorm`` subclass with
``normalized_shape=[C, 1, 1]``, which normalises over channels only for 1x1 maps and raises on larger ones; we use
timm's ``LayerNorm2d`` (normalisation over channels at every position), which is what the paper describes.
:func:`checkpoint_filter_fn` reshapes such ``[C, 1, 1]`` weights to ``[C]``.
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.visformer import Visformer
from torch import nn

from lightning_modules.backbones.common import imagenet_cfg

__all__ = ["checkpoint_filter_fn", "TRANSITION_MODELS"]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official ``danczs/Visformer`` checkpoint onto timm's :class:`Visformer` layout.

    The official training script saves ``{'model': state_dict, 'optimizer': ..., 'epoch': ..., 'args': ...}``;
    its BatchNorm is a wrapper module holding ``.bn`` (``stem.1.bn.weight`` -> timm ``stem.1.weight``) and its
    channel LayerNorm stores ``[C, 1, 1]`` weights (timm's ``LayerNorm2d`` stores ``[C]``). A DDP ``module.``
    prefix, if present, is removed. Keys that already follow timm's layout pass through unchanged.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    elif "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    target = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        key = key.replace(".bn.", ".")
        if key in target and value.ndim == 3 and target[key].ndim == 1 and value.numel() == target[key].numel():
            value = value.reshape(-1)
        out[key] = value
    return out


def _cfg(vit_stem: bool = False, **kwargs) -> dict:
    """``first_conv``: the 7x7 stem conv, or for a ViT stem (net1) the 16x16 patch embedding's conv; ``pool_size``:
    the final map at 224 px (stride 32, or 16 for the ViT stem, which keeps the 14x14 grid)."""
    first_conv, pool_size = ("patch_embed1.proj", (14, 14)) if vit_stem else ("stem.0", (7, 7))
    return imagenet_cfg(pool_size=pool_size, first_conv=first_conv, license="apache-2.0", **kwargs)


# Official ``net1`` ... ``net7`` flags (danczs/Visformer models.py), in timm's argument names.
TRANSITION_MODELS: dict[str, dict] = {
    "visformer_net1": dict(
        init_channels=None, embed_dim=384, depth=(0, 12, 0), num_heads=6, mlp_ratio=4.0, attn_stage="111",
        spatial_conv="000", vit_stem=True, norm_layer=LayerNorm2d, conv_init=True,
    ),
    "visformer_net2": dict(
        init_channels=32, embed_dim=384, depth=(0, 12, 0), num_heads=6, mlp_ratio=4.0, attn_stage="111",
        spatial_conv="000", norm_layer=LayerNorm2d, conv_init=True,
    ),
    "visformer_net3": dict(
        init_channels=32, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, attn_stage="111",
        spatial_conv="000", norm_layer=LayerNorm2d, conv_init=True,
    ),
    "visformer_net4": dict(
        init_channels=32, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, attn_stage="111",
        spatial_conv="000", norm_layer=nn.BatchNorm2d, conv_init=True,
    ),
    "visformer_net5": dict(
        init_channels=32, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, group=1, attn_stage="111",
        spatial_conv="111", norm_layer=nn.BatchNorm2d, conv_init=True,
    ),
    "visformer_net6": dict(
        init_channels=32, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, group=1, attn_stage="111",
        use_pos_embed=False, spatial_conv="111", norm_layer=nn.BatchNorm2d, conv_init=True,
    ),
    "visformer_net7": dict(
        init_channels=32, embed_dim=384, depth=(6, 7, 7), num_heads=6, group=1, attn_stage="000",
        use_pos_embed=False, spatial_conv="111", norm_layer=nn.BatchNorm2d, conv_init=True,
    ),
}  # fmt: skip

default_cfgs = generate_default_cfgs(
    {name: _cfg(vit_stem=args.get("vit_stem", False)) for name, args in TRANSITION_MODELS.items()}
)


def _create_transition(variant: str, pretrained: bool = False, **kwargs) -> Visformer:
    return build_model_with_cfg(
        Visformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", (0, 1, 2)), feature_cls="getter"),
        **dict(TRANSITION_MODELS[variant], **kwargs),
    )


@register_model
def visformer_net1(pretrained: bool = False, **kwargs) -> Visformer:
    """net1: DeiT-S with global average pooling instead of the class token."""
    return _create_transition("visformer_net1", pretrained, **kwargs)


@register_model
def visformer_net2(pretrained: bool = False, **kwargs) -> Visformer:
    """net2: + convolutional stem and step-wise patch embedding."""
    return _create_transition("visformer_net2", pretrained, **kwargs)


@register_model
def visformer_net3(pretrained: bool = False, **kwargs) -> Visformer:
    """net3: + stage-wise design (three resolutions, 4/4/4 blocks)."""
    return _create_transition("visformer_net3", pretrained, **kwargs)


@register_model
def visformer_net4(pretrained: bool = False, **kwargs) -> Visformer:
    """net4: + BatchNorm instead of LayerNorm."""
    return _create_transition("visformer_net4", pretrained, **kwargs)


@register_model
def visformer_net5(pretrained: bool = False, **kwargs) -> Visformer:
    """net5: + 3x3 convolution inside every MLP."""
    return _create_transition("visformer_net5", pretrained, **kwargs)


@register_model
def visformer_net6(pretrained: bool = False, **kwargs) -> Visformer:
    """net6: - position embedding."""
    return _create_transition("visformer_net6", pretrained, **kwargs)


@register_model
def visformer_net7(pretrained: bool = False, **kwargs) -> Visformer:
    """net7: no self-attention (ResNet-like, depth 6/7/7)."""
    return _create_transition("visformer_net7", pretrained, **kwargs)
