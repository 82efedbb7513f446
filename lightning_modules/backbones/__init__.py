"""Shared backbones, registered in timm's registry so that every task builds them by name.

``create_backbone("visformer_small", num_classes=100)`` works for any timm model and for ours; an unknown name
raises a :class:`~suite_base.errors.ConfigError` that lists close matches. ``pretrained`` is an optional path to
a checkpoint file (official layouts are mapped by the family's ``checkpoint_filter_fn``) or a Hugging Face hub id
for clusters with network access; nothing is downloaded unless a hub id is given.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import logging
import os
from collections.abc import Callable

import timm
import torch
from torch import nn

from lightning_modules.backbones import hivit, resnet12, visformer  # noqa: F401 (registers resnet12)
from suite_base.errors import ConfigError

log = logging.getLogger(__name__)

# timm model module -> filter mapping an official checkpoint layout onto ours (timm's convention).
# BEiT (MVP's encoder): timm's own filter resizes the relative position tables and position embeddings to the
# model's grid (a 224 px pre-training fine-tuned on 512 px ADE20K crops), as BEiT's segmentation code does.
CHECKPOINT_FILTERS: dict[str, Callable[[dict, nn.Module], dict]] = {
    "timm.models.beit": timm.models.beit.checkpoint_filter_fn,
    "timm.models.visformer": visformer.checkpoint_filter_fn,
    "lightning_modules.backbones.hivit": hivit.checkpoint_filter_fn,
}


def check_backbone_name(name: str) -> None:
    """Raise a ConfigError naming close matches when ``name`` is not in timm's registry."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ConfigError(f"unknown backbone '{name}'.{hint} See `timm.list_models('*pattern*')` for all names.")


def resolve_checkpoint_path(path: str) -> str:
    """``path`` itself, or for a glob (``runs/pretrain_x/version_*/checkpoints/last.ckpt``) its newest match."""
    if any(ch in path for ch in "*?["):
        matches = sorted(glob.glob(path), key=os.path.getmtime)
        if not matches:
            raise ConfigError(f"pretrained checkpoint '{path}' matches no file; run the pre-training first")
        return matches[-1]
    if not os.path.isfile(path):
        raise ConfigError(f"pretrained checkpoint '{path}' does not exist; give a file path or a hub id")
    return path


def read_torch_checkpoint(path: str) -> tuple[str, dict]:
    """``(resolved path, object)`` of a local checkpoint (a glob loads its newest match), read with
    ``weights_only=True`` (Lightning's saved ``argparse.Namespace`` hyper-parameters allowed)."""
    path = resolve_checkpoint_path(path)
    torch.serialization.add_safe_globals([argparse.Namespace])
    return path, torch.load(path, map_location="cpu", weights_only=True)


def read_backbone_state(path: str, model: nn.Module) -> tuple[str, dict]:
    """``(resolved path, state_dict in model's keys)``: a suite Lightning checkpoint's ``encoder.`` / ``backbone.``
    weights, or a foreign checkpoint mapped by the model family's filter (``CHECKPOINT_FILTERS``)."""
    path, state = read_torch_checkpoint(path)
    state = lightning_weights(state)
    filter_fn = CHECKPOINT_FILTERS.get(type(model).__module__)
    if filter_fn is not None:
        state = filter_fn(state, model)
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return path, state


def headless(model: nn.Module, classifier: str) -> bool:
    """True when ``model`` has no trainable classifier at ``classifier`` (timm's ``num_classes=0``: an Identity)."""
    try:
        return not any(True for _ in model.get_submodule(classifier).parameters())
    except AttributeError:
        return True


def load_checkpoint_file(model: nn.Module, path: str, strict_head: bool = False) -> None:
    """Load a local checkpoint into ``model`` through the family's filter; a mismatched classifier is skipped.

    ``path`` may be a glob (the newest match loads). A Lightning checkpoint of one of our modules loads too: the
    weights under its ``encoder.`` / ``backbone.`` prefix are taken.
    """
    path, state = read_backbone_state(path, model)
    target = model.state_dict()
    skipped = [k for k, v in state.items() if k in target and target[k].shape != v.shape]
    if skipped and not strict_head:
        log.warning(
            "pretrained %s: skipping %d tensors with other shapes (new classifier?): %s", path, len(skipped), skipped
        )
        state = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    # a classification checkpoint (timm's layout) into a headless backbone (num_classes=0): its classifier is dropped
    dropped = [k for k in unexpected if k.startswith(f"{classifier}.")] if headless(model, classifier) else []
    if dropped:
        log.info("pretrained %s: the model has no classifier; dropped %s", path, dropped)
        unexpected = [k for k in unexpected if k not in dropped]
    if unexpected:
        raise ConfigError(f"pretrained {path}: keys not in {type(model).__name__}: {unexpected[:10]}")
    allowed_missing = set(skipped)
    # a pre-training checkpoint has no classifier: the model's fresh one stays (e.g. MVP -> timm BEiT fine-tuning)
    allowed_missing |= {k for k in missing if k.startswith((f"{classifier}.", "fc_norm."))}
    really_missing = [k for k in missing if k not in allowed_missing]
    if really_missing:
        raise ConfigError(f"pretrained {path}: model keys missing from the checkpoint: {really_missing[:10]}")


def lightning_weights(state: dict) -> dict:
    """The backbone weights of a Lightning checkpoint of our modules (``state_dict`` with an ``encoder.`` or
    ``backbone.`` prefix); any other checkpoint is returned unchanged."""
    inner = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(inner, dict) or "pytorch-lightning_version" not in state:
        return state
    for prefix in ("encoder.", "backbone."):
        picked = {k[len(prefix) :]: v for k, v in inner.items() if k.startswith(prefix)}
        if picked:
            return picked
    raise ConfigError("the Lightning checkpoint holds no 'encoder.' or 'backbone.' weights to load into a backbone")


HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def hub_offline() -> bool:
    """True when Hugging Face downloads are switched off (``HF_HUB_OFFLINE`` set to 1 / true / yes / on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def check_hub_weights(hub_id: str, name: str, key: str = "pretrained") -> None:
    """Fail at once, in one line naming the config ``key``, when the machine is offline (``HF_HUB_OFFLINE``) and the
    weights of ``hub_id`` are not in the local Hugging Face cache: otherwise timm would first try the network and
    then fail with a long traceback. Online, or with the weights cached, nothing is checked."""
    if not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_WEIGHT_FILES:
        try:
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return
        except ValueError:  # not a valid repository id: certainly not cached
            break
    raise ConfigError(
        f"{key} is the hub id '{hub_id}' but HF_HUB_OFFLINE=1 and its weights are not in the Hugging Face cache: "
        f"set {key} to a local file of {name} weights in timm's layout (a state dict .pth or .safetensors), or run "
        "once with network access to cache them"
    )


def create_backbone(name: str, pretrained: str | None = None, weights_key: str = "pretrained", **kwargs) -> nn.Module:
    """Build ``name`` from timm's registry; ``pretrained``: checkpoint path or hub id (None: random init).

    ``weights_key`` is the config key that holds ``pretrained`` (named in the error when a hub id cannot load
    offline)."""
    check_backbone_name(name)
    is_local = os.path.exists(pretrained or "") or any(ch in (pretrained or "") for ch in "*?[")
    if pretrained and not is_local and not pretrained.startswith(("/", ".")):
        # a hub id for machines with network access, e.g. "timm/visformer_small.in1k"
        check_hub_weights(pretrained, name, weights_key)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"hf_hub_id": pretrained}, **kwargs)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained:
        load_checkpoint_file(model, pretrained)
    return model


def registered_model(
    name: str,
    pretrained: str | None = None,
    num_classes: int | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    kwargs: dict | None = None,
    weights_key: str = "model.init_args.net.init_args.pretrained",
) -> nn.Module:
    """A model of timm's registry (the suite's registrations included) as an injected network in a config::

        net:
          class_path: lightning_modules.backbones.registered_model
          init_args: {name: visformer_small, num_classes: 1000, drop_path_rate: 0.1}

    Options left ``None`` keep the model's own default; ``kwargs`` passes any other keyword of the model (e.g.
    ``{img_size: 192}``). ``pretrained``, ``weights_key``: as :func:`create_backbone`."""
    options = {"num_classes": num_classes, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    options = {key: value for key, value in options.items() if value is not None}
    clash = sorted(set(options) & set(kwargs or {}))
    if clash:
        raise ConfigError(f"{name}: {', '.join(clash)} given both as an option and in kwargs; give it once")
    return create_backbone(name, pretrained, weights_key=weights_key, **options, **(kwargs or {}))


def create_timm_pretrained(name: str, pretrained: str | bool | None = False, **kwargs) -> nn.Module:
    """``name`` from timm's registry with timm's own weights: ``True`` (timm's cache or hub), a local file in timm's
    layout for that model (``pretrained_cfg_overlay``; timm adapts the classifier), or ``False`` / ``None`` (random
    init). For frozen feature extractors (FID, DAMSM); checkpoints of this suite's own runs load with
    :func:`create_backbone`."""
    check_backbone_name(name)
    if isinstance(pretrained, str):
        if not os.path.isfile(pretrained):
            raise ConfigError(f"pretrained weights '{pretrained}' for {name} do not exist; give a local file")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": pretrained}, **kwargs)
    return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
