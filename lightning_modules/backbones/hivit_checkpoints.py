"""Official iTPN checkpoints (and our Lightning ones) mapped onto :class:`~lightning_modules.backbones.hivit.HiViT`'s
state_dict; re-exported from ``lightning_modules.backbones.hivit``."""

from __future__ import annotations

import logging
import math

import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

from suite_base.errors import ConfigError

log = logging.getLogger(__name__)

# Official top-level names of the pyramid's modules (they sit beside the backbone in official checkpoints).
PYRAMID_KEYS = (
    "align_dim_16tofpn",
    "fpn_modules",
    "align_dim_16to8",
    "split_16to8",
    "block_16to8",
    "align_dim_8to4",
    "split_8to4",
    "block_8to4",
)
# Official top-level names of the pixel pre-training's MAE decoder (iTPNMaskedAutoencoder, models_itpn_mim.py).
PIXEL_DECODER_KEYS = (
    "decoder_embed",
    "mask_token",
    "decoder_pos_embed",
    "decoder_blocks",
    "decoder_norm",
    "decoder_pred",
)
# Official top-level names that exist only in pre-training checkpoints (reconstruction / distillation heads).
PRETRAIN_ONLY_KEYS = PIXEL_DECODER_KEYS + (
    "lm_head",
    "lm_cls_head",
    "norm",
    "norm_cls",
    "cls_pt_layers",
    "relative_position_index",
)


def _unwrap(state_dict: dict) -> dict:
    for key in ("model", "module", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    # strip a wrapper prefix (DDP ``module.``, our Lightning modules' ``encoder.`` / ``backbone.``)
    anchor = "patch_embed.proj.weight"
    prefix = next((k[: -len(anchor)] for k in state_dict if k.endswith(anchor)), "")
    if prefix:
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official iTPN checkpoint (pixel pre-training, CLIP pre-training or fine-tuned classifier; also our own
    Lightning checkpoints) onto :class:`HiViT`'s state_dict.

    * the wrapper (``{'model': ...}``, ``module.``) is removed; a Lightning checkpoint's ``encoder.`` / ``backbone.``
      prefix too;
    * the pyramid's top-level official names go under ``pyramid.`` (or are dropped for a model without pyramid);
    * pre-training-only heads (``decoder_*``, ``mask_token``, ``lm_head`` ...) are dropped and reported;
    * a model with ``rpe`` loading a checkpoint trained without it (pixel pre-training -> fine-tuning, as the
      official recipe does) keeps its zero-initialised bias tables; layer-scale factors missing from a checkpoint
      trained without them keep their init; a missing classifier keeps its fresh init; a
      ``block_*to*.1`` missing from an ``fpn_depth=1`` checkpoint keeps its random init (official seg configs);
    * ``absolute_pos_embed`` (bicubic) and the relative position bias tables (timm's BEiT-style resize) are resampled
      to the model's grid, e.g. for fine-tuning at 384 px;
    * any other shape difference means another variant: a ConfigError names the key and both shapes.
    """
    state_dict = _unwrap(state_dict)
    target = model.state_dict()
    out, dropped, fresh = {}, [], []
    for key, value in state_dict.items():
        top = key.split(".")[0]
        if top in PYRAMID_KEYS:
            if model.pyramid is None:
                dropped.append(key)
                continue
            key = f"pyramid.{key}"
        elif top in PRETRAIN_ONLY_KEYS:
            dropped.append(key)
            continue
        if key not in target:
            dropped.append(key)
            continue
        if key == "absolute_pos_embed" and value.shape != target[key].shape:
            old = int(math.isqrt(value.shape[1]))
            value = resample_abs_pos_embed(value, [model.grid, model.grid], [old, old], num_prefix_tokens=0)
        if key.endswith("relative_position_bias_table") and value.shape != target[key].shape:
            value = resize_rel_pos_bias_table(value, (model.grid, model.grid), tuple(target[key].shape))
        if value.shape != target[key].shape and not key.startswith(("head.", "fc_norm.")):
            raise ConfigError(
                f"checkpoint does not fit this model variant: '{key}' has shape {list(value.shape)} in the checkpoint "
                f"but {list(target[key].shape)} in the model (embed_dim={model.embed_dim}, depth={model.depth}, "
                f"img_size={model.grid * model.patch_size}); choose the backbone the checkpoint was trained with"
            )
        out[key] = value
    for key, value in target.items():
        if key not in out and (
            key.startswith(("head.", "fc_norm.")) or key.endswith(("gamma_1", "gamma_2"))
            or "relative_position_bias_table" in key or "block_" in key
        ):  # fmt: skip
            out[key] = value
            fresh.append(key)
    if dropped:
        log.warning(
            "iTPN checkpoint: dropped %d pre-training-only tensors, harmless for this model (%s ...)",
            len(dropped),
            ", ".join(dropped[:4]),
        )
    if fresh:
        log.warning(
            "iTPN checkpoint: %d tensors not in the checkpoint keep their fresh init (%s ...)",
            len(fresh),
            ", ".join(fresh[:4]),
        )
    return out
