"""The released iTPN pixel pre-training checkpoints, loaded into :class:`~lightning_modules.mim.MaskedImageModeling`.

The released layout is the ``state_dict`` of ``iTPNMaskedAutoencoder`` (``itpn_pixel/models/models_itpn_mim.py`` of
sunsmarterjie/iTPN), saved by MAE's ``misc.save_model`` as ``{'model': ..., 'optimizer': ..., 'epoch': ...,
'scaler': ..., 'args': ...}``. All of its names sit at the top level:

* the HiViT encoder: ``patch_embed.*``, ``absolute_pos_embed``, ``blocks.*`` (and ``relative_position_index``, a
  buffer of the grid, when the model was built with ``rpe``) -> our ``encoder.*``;
* the pyramid: ``align_dim_16tofpn``, ``fpn_modules``, ``align_dim_16to8``, ``split_16to8``, ``block_16to8``,
  ``align_dim_8to4``, ``split_8to4``, ``block_8to4`` -> our ``encoder.pyramid.*``;
* the MAE decoder: ``decoder_embed.{0,1,2}`` (LN + Linear per level), ``mask_token``, ``decoder_pos_embed`` (the
  fixed sin-cos table), ``decoder_blocks.*``, ``decoder_norm``, ``decoder_pred`` -> our ``decoder.*``.

The mapping is strict: every tensor of the module must come from the file and every tensor of the file must land in
the module, with equal shapes; otherwise a :class:`~suite_base.errors.ConfigError` names the file, the keys and the
fix. A Lightning checkpoint of our own pixel pre-training (``encoder.*`` / ``decoder.*``) passes through unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.backbones import read_torch_checkpoint
from lightning_modules.backbones.hivit import PIXEL_DECODER_KEYS, PYRAMID_KEYS
from suite_base.errors import ConfigError

__all__ = ["released_pixel_state_dict", "load_released_pixel_checkpoint"]

# top-level names that only the released CLIP pre-training model (itpn_clip) has: a wrong-recipe hint
_CLIP_ONLY_KEYS = ("lm_head", "lm_cls_head", "cls_pt_layers", "norm_cls")


def _state_of(checkpoint: dict, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint object: the dict under ``model`` / ``module`` / ``state_dict`` if there is one,
    with a DDP ``module.`` prefix removed."""
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{source}: holds a {type(checkpoint).__name__}, not a checkpoint dict of tensors")
    for key in ("model", "module", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ConfigError(f"{source}: no tensors found (keys {sorted(checkpoint)[:8]}); is it a model checkpoint?")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _fix_hints(missing: list[str], unexpected: list[str]) -> list[str]:
    hints = []
    if any(k.split(".")[0] in _CLIP_ONLY_KEYS for k in unexpected):
        hints.append(
            "this is a CLIP pre-training checkpoint (itpn_clip: lm_head, cls_pt_layers ...); only its encoder and "
            "pyramid load, into a backbone: create_backbone(..., pretrained=path) or a fine-tuning config's pretrained"
        )
    if any("relative_position_bias_table" in k for k in missing):
        hints.append(
            "the released pixel pre-training runs without relative position bias: set the encoder's kwargs.rpe false"
        )
    if any("relative_position_bias_table" in k for k in unexpected):
        hints.append("the checkpoint has relative position bias tables: set the encoder's kwargs.rpe true")
    if any(k.startswith(("encoder.blocks.", "decoder.decoder_blocks.", "encoder.pyramid.block_")) for k in missing):
        hints.append(
            "the module has more blocks than the checkpoint: match the encoder's name (base / large), kwargs "
            "(mlp_depth, depth, fpn_depth) and decoder_depth to the checkpoint's recipe"
        )
    if any(k.startswith(("blocks.", "decoder_blocks.", "block_")) for k in unexpected):
        hints.append(
            "the checkpoint has more blocks than the module: match the encoder's name (base / large), kwargs "
            "(mlp_depth, depth, fpn_depth) and decoder_depth to the checkpoint's recipe"
        )
    if not hints:
        hints.append(
            "build the module with the checkpoint's recipe (configs/itpn/pretrain_*_pixel_*.yaml: target pixels, "
            "rpe false, the released encoder and decoder sizes)"
        )
    return hints


def released_pixel_state_dict(
    checkpoint: dict, module: nn.Module, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map a released iTPN pixel pre-training checkpoint onto ``module.state_dict()``'s keys, strictly.

    Args:
        checkpoint: the loaded file (``{'model': state_dict, ...}``, a bare state dict, or a Lightning checkpoint of
            our own pixel pre-training).
        module: a :class:`MaskedImageModeling` built with ``target: pixels`` and the checkpoint's sizes.
        source: how the errors name the checkpoint (its path).

    Returns:
        the state dict in the module's keys, ready for ``module.load_state_dict(..., strict=True)``.

    Raises:
        ConfigError: the module is not a pixel pre-training module, keys are missing or left over (listed, with the
            fix), or a tensor's shape differs (the key and both shapes).
    """
    if getattr(module, "target", None) != "pixels" or not getattr(module, "is_itpn", False):
        raise ConfigError(
            f"{source}: the released iTPN pixel pre-training layout loads into a MaskedImageModeling with an itpn_* "
            "encoder and target 'pixels' (configs/itpn/pretrain_*_pixel_*.yaml)"
        )
    state = _state_of(checkpoint, source)
    target = module.state_dict()
    if any(k.startswith("encoder.patch_embed.") for k in state):  # our own layout already
        mapped = dict(state)
    else:
        mapped = {}
        for key, value in state.items():
            top = key.split(".")[0]
            if key == "relative_position_index":  # a function of the grid; our buffer is not saved
                continue
            if top in PYRAMID_KEYS:
                mapped[f"encoder.pyramid.{key}"] = value
            elif top in PIXEL_DECODER_KEYS:
                mapped[f"decoder.{key}"] = value
            else:
                mapped[f"encoder.{key}"] = value
    missing = sorted(k for k in target if k not in mapped)
    unexpected = sorted(k for k in mapped if k not in target)
    if missing or unexpected:
        released = [k.removeprefix("encoder.").removeprefix("pyramid.").removeprefix("decoder.") for k in unexpected]
        raise ConfigError(
            f"{source} does not fit this iTPN pixel pre-training module: {len(missing)} module tensors are missing "
            f"from it ({', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}) and {len(unexpected)} of its "
            f"tensors have no place in the module ({', '.join(released[:6])}{' ...' if len(released) > 6 else ''}). "
            + "; ".join(_fix_hints(missing, released))
        )
    for key, value in mapped.items():
        if value.shape != target[key].shape:
            raise ConfigError(
                f"{source} does not fit this iTPN pixel pre-training module: '{key}' has shape {list(value.shape)} in "
                f"the checkpoint but {list(target[key].shape)} in the module; build the module with the checkpoint's "
                "sizes (the encoder's name base / large and kwargs img_size / embed_dim / fpn_dim, decoder_dim)"
            )
    return mapped


def load_released_pixel_checkpoint(module: nn.Module, path: str) -> str:
    """Load the released iTPN pixel pre-training checkpoint at ``path`` (a glob loads its newest match) into
    ``module``'s encoder, pyramid and decoder; returns the resolved path."""
    path, checkpoint = read_torch_checkpoint(path)
    module.load_state_dict(released_pixel_state_dict(checkpoint, module, source=path), strict=True)
    return path
