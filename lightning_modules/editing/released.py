"""Released DE-Net checkpoints (tobran/DE-Net) into our generator, discriminator and conditional head.

The official code (``code/models/model.py`` and ``code/models/CCN.py``) names its networks ``NetG``, ``NetD`` and
``NetC``; its ``code/src/train.py`` saves ``{'model': {'netG', 'netD', 'netC'}, 'optimizers': ..., 'epoch': ...}``
as ``state_epoch_<N>.pth``, and its loader (``lib/utils.py``'s ``load_model_weights``, shared with DF-GAN) strips the
``module.`` prefix that a ``DistributedDataParallel`` network adds to every key. The three state dicts map onto
:class:`DENetGenerator`, :class:`DENetDiscriminator` and :class:`ConditionalHead` key by key, with the same shapes
(timm's ``checkpoint_filter_fn`` convention). Only one released tensor is dropped: the ``[1, 8, 1, 1]`` bias that
each ``cConv2d`` registers and its ``forward`` never adds (``# + self.bias`` in ``CCN.py``).

Key map (released -> ours; ``{i}`` is the official 1-based block number, ours the 0-based list index ``i - 1``):

* ``NetG``: ``ext`` -> ``stem``; ``down{i}.conv`` / ``.bn`` -> ``down.{i-1}.conv`` / ``.bn``; ``yp{i}.conv`` ->
  ``semantic.{i-1}.conv``; ``up{i}`` -> ``edit.{i-1}`` with, inside it, ``conv`` -> ``conv``,
  ``CAFF.fc_gamma`` / ``fc_beta`` ``.linear1`` / ``.linear2`` -> ``channel.gamma`` / ``beta`` ``.0`` / ``.2``,
  ``DCBlk.conv.weight`` -> ``spatial.conv.weight``, ``DCBlk.conv.scales`` / ``shifts`` -> ``spatial.conv.scale`` /
  ``shift``, ``DCBlk.conv_weight`` / ``conv_bias`` -> ``spatial.to_weight`` / ``to_bias``, ``fc.linear2`` ->
  ``compose`` (``DCBlk.conv.bias`` dropped); ``cwp.img_enc.conv1`` / ``conv2`` -> ``cwp.image.0`` / ``.2``;
  ``cwp.txt_enc.main`` / ``cwp.fuse.main`` -> ``cwp.text`` / ``cwp.fuse``; ``cwp.fc.linear1`` -> ``cwp.out.0``;
  ``conv_img.1`` -> ``to_rgb.1``. Both list the semantic and editing blocks from 4x4 upwards and the down blocks
  from the full resolution downwards.
* ``NetD``: ``block{i}.conv`` / ``.batchnorm`` -> the i-th convolution of ``blocks`` / the batch norm after it
  (``block0`` has none).
* ``NetC``: ``joint_conv.{0,2}`` -> ``joint.{0,2}``.

The released networks are built for 256 px (six stages) and a 256-d sentence; ``released_config`` reads ``ngf``,
``ndf``, the image size and the sentence dimension off a checkpoint's shapes, and :func:`build_released_networks`
builds matching networks of ours and loads them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lightning_modules.editing.networks import ConditionalHead, DENetDiscriminator, DENetGenerator
from suite_base.errors import ConfigError

log = logging.getLogger(__name__)

NETWORKS = {"netG": "generator (NetG)", "netD": "discriminator (NetD)", "netC": "conditional head (NetC)"}
# other containers of the three state dicts: {G,D,C}_state_dict (the layout of ../shared/golden/denet_networks_small.pt)
CONTAINER_NAMES = {"G_state_dict": "netG", "D_state_dict": "netD", "C_state_dict": "netC"}
# a key that only one of the three networks has, to recognise a bare state dict
SIGNATURE_KEYS = {"netG": "ext.weight", "netD": "block0.conv.weight", "netC": "joint_conv.0.weight"}

# NetG's block lists (1-based numbers, lowest resolution first for yp / up, highest first for down, as ours)
GENERATOR_BLOCKS = {"down": "down", "yp": "semantic", "up": "edit"}
GENERATOR_BLOCK = re.compile(r"^(down|yp|up)(\d+)\.(.+)$")
# released sub-module prefix -> ours inside a block (module docstring's table); the longest prefix wins
BLOCK_PREFIXES = {
    "conv.": "conv.",
    "bn.": "bn.",
    "CAFF.fc_gamma.linear1.": "channel.gamma.0.",
    "CAFF.fc_gamma.linear2.": "channel.gamma.2.",
    "CAFF.fc_beta.linear1.": "channel.beta.0.",
    "CAFF.fc_beta.linear2.": "channel.beta.2.",
    "DCBlk.conv.weight": "spatial.conv.weight",
    "DCBlk.conv.scales.linear1.": "spatial.conv.scale.0.",
    "DCBlk.conv.scales.linear2.": "spatial.conv.scale.2.",
    "DCBlk.conv.shifts.linear1.": "spatial.conv.shift.0.",
    "DCBlk.conv.shifts.linear2.": "spatial.conv.shift.2.",
    "DCBlk.conv_weight.": "spatial.to_weight.",
    "DCBlk.conv_bias.": "spatial.to_bias.",
    "fc.linear2.": "compose.",
}
# released prefix -> ours outside the blocks
TOP_PREFIXES = {
    "ext.": "stem.",
    "cwp.img_enc.conv1.": "cwp.image.0.",
    "cwp.img_enc.conv2.": "cwp.image.2.",
    "cwp.txt_enc.main.linear1.": "cwp.text.0.",
    "cwp.txt_enc.main.linear2.": "cwp.text.2.",
    "cwp.fuse.main.linear1.": "cwp.fuse.0.",
    "cwp.fuse.main.linear2.": "cwp.fuse.2.",
    "cwp.fc.linear1.": "cwp.out.0.",
    "conv_img.1.": "to_rgb.1.",
}
# cConv2d's bias: registered and saved, but ``forward`` never adds it (``# + self.bias`` in CCN.py)
UNUSED_GENERATOR_KEY = re.compile(r"^up\d+\.DCBlk\.conv\.bias$")


def _rename(rest: str, prefixes: Mapping[str, str]) -> str | None:
    for prefix in sorted(prefixes, key=len, reverse=True):
        if rest.startswith(prefix):
            return prefixes[prefix] + rest[len(prefix) :]
    return None


def generator_key(key: str) -> str | None:
    """Our :class:`DENetGenerator` key of a released ``NetG`` key (None: not a NetG key we know)."""
    block = GENERATOR_BLOCK.match(key)
    if block is None:
        return _rename(key, TOP_PREFIXES)
    kind, number, rest = block.groups()
    inner = _rename(rest, BLOCK_PREFIXES)  # a name the block kind lacks is not in the model: reported unexpected
    return None if inner is None else f"{GENERATOR_BLOCKS[kind]}.{int(number) - 1}.{inner}"


def discriminator_key(key: str, model: DENetDiscriminator) -> str | None:
    """Our key of a released ``NetD`` key: ``block{i}.conv`` is the i-th convolution of ``model.blocks`` and
    ``block{i}.batchnorm`` the batch norm that follows it (``block0`` has none)."""
    match = re.match(r"^block(\d+)\.(conv|batchnorm)\.(.+)$", key)
    if match is None:
        return None
    number, part, rest = int(match.group(1)), match.group(2), match.group(3)
    convs = [i for i, layer in enumerate(model.blocks) if isinstance(layer, nn.Conv2d)]
    if number >= len(convs):
        return None
    index = convs[number] + (1 if part == "batchnorm" else 0)
    if part == "batchnorm" and not isinstance(model.blocks[index], nn.BatchNorm2d):
        return None
    return f"blocks.{index}.{rest}"


def head_key(key: str) -> str | None:
    """Our :class:`ConditionalHead` key of a released ``NetC`` key (``joint_conv.{0,2}`` -> ``joint.{0,2}``)."""
    return "joint." + key[len("joint_conv.") :] if key.startswith("joint_conv.") else None


def released_config(networks: Mapping[str, Mapping[str, Tensor]]) -> dict[str, int]:
    """``ngf``, ``ndf``, ``image_size`` and ``cond_dim`` of released state dicts (``{'netG': ..., 'netD': ...,
    'netC': ...}``, any subset), read off their shapes: the arguments our networks need to take them."""
    config: dict[str, int] = {}
    if "netG" in networks:
        g = networks["netG"]
        downs = {int(m.group(1)) for k in g if (m := re.match(r"^down(\d+)\.", k))}
        config.update(ngf=int(g["ext.weight"].shape[0]), image_size=4 * 2 ** len(downs))
        if "cwp.txt_enc.main.linear1.weight" in g:
            config["cond_dim"] = int(g["cwp.txt_enc.main.linear1.weight"].shape[1])
    if "netD" in networks:
        d = networks["netD"]
        blocks = {int(m.group(1)) for k in d if (m := re.match(r"^block(\d+)\.", k))}
        config.update(ndf=int(d["block0.conv.weight"].shape[0]), image_size=4 * 2 ** len(blocks))
    if "netC" in networks:
        joint = networks["netC"]["joint_conv.0.weight"]  # [2 ndf, 8 ndf + cond_dim, 3, 3]
        config.setdefault("ndf", int(joint.shape[0]) // 2)
        config.setdefault("cond_dim", int(joint.shape[1]) - 8 * config["ndf"])
    return config


def _fix(name: str, config: Mapping[str, int]) -> str:
    args = {
        "netG": ("ngf", "image_size", "cond_dim"),
        "netD": ("ndf", "image_size"),
        "netC": ("ndf", "cond_dim"),
    }[name]
    given = ", ".join(f"{a}={config[a]}" for a in args if a in config)
    return (
        f"the checkpoint's {NETWORKS[name]} takes {given}: build ours with those (in DENet: image_size, ngf, ndf, "
        "and a DAMSM whose sentences have cond_dim dimensions; build_released_networks reads them off the file)"
    )


def _model_image_size(name: str, model: nn.Module) -> int | None:
    if name == "netG":
        return model.image_size
    if name == "netD":
        return 4 * 2 ** sum(isinstance(layer, nn.Conv2d) for layer in model.blocks)
    return None


def convert_released(name: str, state: Mapping[str, Tensor], model: nn.Module, source: str = "checkpoint") -> dict:
    """Our ``model``'s state dict from the released ``name`` (``netG`` / ``netD`` / ``netC``) state dict, checked key
    by key: another image size, unknown or missing keys and other shapes raise a :class:`ConfigError` naming them
    and the fix."""
    if name == "netG":
        rename = generator_key
    elif name == "netD":
        rename = lambda key: discriminator_key(key, model)  # noqa: E731 (needs the model's layer indices)
    else:
        rename = head_key
    config = released_config({name: state}) if SIGNATURE_KEYS[name] in state else {}
    built_for = _model_image_size(name, model)
    if "image_size" in config and built_for is not None and config["image_size"] != built_for:
        raise ConfigError(
            f"{source}: the released {NETWORKS[name]} is built for {config['image_size']} px images "
            f"({int(math.log2(config['image_size'] // 4))} stages), ours for {built_for} px; " + _fix(name, config)
        )
    target = model.state_dict()
    converted, unexpected = {}, []
    for key, value in state.items():
        if name == "netG" and UNUSED_GENERATOR_KEY.match(key):
            continue
        ours = rename(key)
        if ours is None or ours not in target:
            unexpected.append(key)
        else:
            converted[ours] = value
    missing = [k for k in target if k not in converted]
    if unexpected or missing:
        raise ConfigError(
            f"{source}: not the released DE-Net {NETWORKS[name]} layout (tobran/DE-Net code/models/model.py): "
            f"unexpected keys {_few(unexpected)}, keys of ours missing from the checkpoint {_few(missing)}"
        )
    shapes = [
        f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(target[k].shape)} in ours"
        for k, v in converted.items()
        if v.shape != target[k].shape
    ]
    if shapes:
        raise ConfigError(f"{source}: {len(shapes)} shape mismatches ({'; '.join(shapes[:4])}); " + _fix(name, config))
    return converted


def _few(keys: list[str], n: int = 8) -> str:
    return str(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _strip_ddp(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without DistributedDataParallel's ``module.`` prefix (as the official ``load_model_weights``)."""
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def released_state_dicts(checkpoint: Mapping | str | os.PathLike, source: str | None = None) -> dict[str, dict]:
    """``{'netG': ..., 'netD': ..., 'netC': ...}`` (the ones present) of a released DE-Net checkpoint: a path or the
    loaded object. Accepted: ``train.py``'s ``{'model': {'netG', 'netD', 'netC'}, 'optimizers', 'epoch'}``, the
    three state dicts at the top level (``netG`` ... or ``G_state_dict`` ...), or one bare ``NetG`` / ``NetD`` /
    ``NetC`` state dict; ``module.`` prefixes (DDP) are removed."""
    if isinstance(checkpoint, str | os.PathLike):
        source = source or str(checkpoint)
        if not os.path.isfile(checkpoint):
            raise ConfigError(f"released DE-Net checkpoint {checkpoint} does not exist")
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    source = source or "checkpoint"
    if not isinstance(checkpoint, Mapping):
        raise ConfigError(f"{source}: a released DE-Net checkpoint is a dict, got {type(checkpoint).__name__}")
    container = checkpoint.get("model") if isinstance(checkpoint.get("model"), Mapping) else checkpoint
    found = {CONTAINER_NAMES.get(k, k): v for k, v in container.items() if CONTAINER_NAMES.get(k, k) in NETWORKS}
    if not found:
        bare = _strip_ddp(container) if all(isinstance(v, Tensor) for v in container.values()) else {}
        found = {name: container for name, key in SIGNATURE_KEYS.items() if key in bare}
    if not found:
        hint = (
            " (a Lightning checkpoint of this suite: resume it with --ckpt_path instead)"
            if "pytorch-lightning_version" in checkpoint
            else ""
        )
        raise ConfigError(
            f"{source}: not a released DE-Net checkpoint{hint}: expected tobran/DE-Net train.py's "
            "{'model': {'netG', 'netD', 'netC'}, ...} or a NetG / NetD / NetC state dict, found the keys "
            + _few([str(k) for k in checkpoint])
        )
    return {name: _strip_ddp(state) for name, state in found.items()}


def load_released_denet(
    checkpoint: Mapping | str | os.PathLike,
    generator: DENetGenerator | None = None,
    discriminator: DENetDiscriminator | None = None,
    head: ConditionalHead | None = None,
    strict: bool = True,
    source: str | None = None,
) -> list[str]:
    """Load a released DE-Net checkpoint (path or loaded object) into the given networks; returns the released
    names loaded. ``strict``: each given network must be in the checkpoint (otherwise those absent are skipped, and
    at least one must load). ``source`` names the checkpoint in errors (default: the path)."""
    source = source or (str(checkpoint) if isinstance(checkpoint, str | os.PathLike) else "checkpoint")
    states = released_state_dicts(checkpoint, source)
    targets = {"netG": generator, "netD": discriminator, "netC": head}
    wanted = {name: model for name, model in targets.items() if model is not None}
    absent = [NETWORKS[name] for name in wanted if name not in states]
    if absent and (strict or len(absent) == len(wanted)):
        raise ConfigError(f"{source}: the checkpoint holds no {', '.join(absent)}; it holds {sorted(states)}")
    converted = {name: convert_released(name, states[name], model, source) for name, model in wanted.items()
                 if name in states}  # fmt: skip
    for name, state in converted.items():  # every check passed before any network changes
        wanted[name].load_state_dict(state)
    if absent:
        log.info("%s: no %s in the checkpoint; they keep their initialisation", source, ", ".join(absent))
    return list(converted)


def build_released_networks(
    checkpoint: Mapping | str | os.PathLike,
) -> tuple[DENetGenerator | None, DENetDiscriminator | None, ConditionalHead | None]:
    """Our generator, discriminator and head built to a released checkpoint's sizes (:func:`released_config`) with
    its weights loaded; a network the checkpoint does not hold is None."""
    source = str(checkpoint) if isinstance(checkpoint, str | os.PathLike) else "checkpoint"
    states = released_state_dicts(checkpoint, source)
    config = released_config(states)
    cond_dim, image_size = config.get("cond_dim", 256), config.get("image_size", 256)  # NetC alone: official 256
    g = DENetGenerator(config["ngf"], image_size, cond_dim) if "netG" in states else None
    d = DENetDiscriminator(config["ndf"], image_size) if "netD" in states else None
    c = ConditionalHead(8 * config["ndf"], cond_dim, config["ndf"]) if "netC" in states else None
    load_released_denet(states, g, d, c, source=source)
    return g, d, c
