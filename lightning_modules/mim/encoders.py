"""The MIM encoders as injected networks (``model.init_args.encoder``): an iTPN (HiViT + feature pyramid) or a
BEiT-style timm ViT, built from timm's registry with the recipes' switches."""

from __future__ import annotations

import timm
from timm.models.beit import Beit
from torch import nn

from lightning_modules.backbones import check_backbone_name
from lightning_modules.backbones.hivit import HiViT, PosEmbedMode
from suite_base.errors import ConfigError


def mim_encoder(
    name: str = "itpn_base_3324_patch16_224",
    kwargs: dict | None = None,
    drop_path_rate: float = 0.0,
    init_values: float | None = None,
    pos_embed_mode: PosEmbedMode = "exact",
) -> nn.Module:
    """A randomly initialised MIM encoder without classifier::

        encoder:
          class_path: lightning_modules.mim.encoders.mim_encoder
          init_args: {name: itpn_base_3324_patch16_224, kwargs: {rpe: true}, drop_path_rate: 0.1, init_values: 0.1}

    Args:
        name: ``itpn_base_3324_patch16_224``, ``itpn_large_2240_patch16_224``, ``itpn_large_2240_patch16_256``
            (iTPN, built with its 3-level pyramid) or ``beit_base_patch16_224`` / ``beit_large_patch16_224`` (MVP).
        kwargs: other constructor arguments (``img_size``, ``embed_dim``, ``depth``, ``rpe``, ``ape``, ``ape_init``,
            ``fpn_dim``, ``fpn_depth`` ... for toy sizes and the recipes' switches).
        drop_path_rate: stochastic depth (the iTPN auxiliary head continues the encoder's rates).
        init_values: layer-scale init (0.1 in the CLIP recipes; None: no layer scale).
        pos_embed_mode: how an iTPN encoder adds its absolute position table to the kept patches: ``exact`` (each
            patch its own row) or ``reference`` (resampled with the released code's ``(Hp + 0.1) / Hp`` scale
            whenever patches are dropped, as the released pixel pre-training ran; see
            :func:`~lightning_modules.backbones.hivit.reference_resample_pos_table`). Only the pixel recipe drops
            patches, so the CLIP recipes are the same either way.
    """
    check_backbone_name(name)
    options = dict(kwargs or {})
    options.setdefault("drop_path_rate", drop_path_rate)
    if init_values is not None:
        options.setdefault("init_values", init_values)
    if name.startswith(("itpn", "hivit")):
        options.setdefault("num_outs", 3)
        if options.setdefault("pos_embed_mode", pos_embed_mode) != pos_embed_mode:
            raise ConfigError(
                f"pos_embed_mode is {pos_embed_mode!r} but the encoder's kwargs.pos_embed_mode is "
                f"{options['pos_embed_mode']!r}; set it once, as model.init_args.encoder.init_args.pos_embed_mode"
            )
    elif pos_embed_mode != "exact":
        raise ConfigError(
            f"pos_embed_mode {pos_embed_mode!r} is the released iTPN code's table resampling and needs an itpn_* "
            f"encoder; encoder '{name}' takes pos_embed_mode 'exact'"
        )
    encoder = timm.create_model(name, pretrained=False, num_classes=0, **options)
    if not isinstance(encoder, (HiViT, Beit)):
        raise ConfigError(f"encoder '{name}' is neither an iTPN/HiViT nor a BEiT-style ViT (timm 'beit_*')")
    if isinstance(encoder, HiViT) and encoder.pyramid is None:
        raise ConfigError("the iTPN recipes need the pyramid; leave the encoder's kwargs.num_outs at 3")
    if getattr(encoder, "fc_norm", None) is not None and not isinstance(encoder, HiViT):
        # timm's BEiT pools through fc_norm, which pre-training never uses (every parameter must get a gradient
        # under DDP); fine-tuning starts it fresh, as BEiT does
        encoder.fc_norm = nn.Identity()
    return encoder
