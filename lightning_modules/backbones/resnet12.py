"""ResNet-12, the few-shot backbone of COSOC (Luo et al., NeurIPS 2021, arXiv 2107.07746) and most FSL work,
registered in timm's registry as ``resnet12``.

As the official LightningFSL ``architectures/feature_extractor/resnet12.py`` (used by COSOC): four residual blocks
with 64, 160, 320 and 640 channels; each block is three 3x3 conv (no bias) + batch norm layers with LeakyReLU(0.1)
after each (the third after the residual add), a 1x1 conv + batch norm shortcut, then 2x2 max pooling. No DropBlock.
Kaiming-normal initialisation (fan_out, leaky_relu), batch norm weight 1 and bias 0. An 84x84 image gives a 640x5x5
map (``forward_features``); ``forward`` average-pools it into the 640-d feature (and a linear head when
``num_classes > 0``). 12,424,320 parameters without a head, as the official ``create_model()``.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices  # no public export; timm's own models import it from here
from torch import Tensor, nn

MINI_IMAGENET_MEAN = (0.4712, 0.4499, 0.4031)
MINI_IMAGENET_STD = (0.2726, 0.2634, 0.2794)


class Block(nn.Module):
    """Three conv3x3-BN-LeakyReLU(0.1) layers, a conv1x1-BN shortcut added before the last activation, max-pool 2."""

    def __init__(self, in_ch: int, out_ch: int, slope: float = 0.1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)
        self.conv2, self.bn2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)
        self.conv3, self.bn3 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.act(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.pool(self.act(h + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12 (module docstring). ``num_classes=0`` (the default here) gives the pooled 640-d feature."""

    def __init__(self, channels: tuple[int, ...] = (64, 160, 320, 640), num_classes: int = 0, in_chans: int = 3,
                 slope: float = 0.1, global_pool: str = "avg") -> None:  # fmt: skip
        super().__init__()
        widths = (in_chans, *channels)
        self.num_classes = num_classes
        self.layers = nn.Sequential(*(Block(widths[i], widths[i + 1], slope) for i in range(len(channels))))
        self.num_features = self.head_hidden_size = channels[-1]
        self.global_pool = global_pool
        self.head = nn.Linear(channels[-1], num_classes) if num_classes else nn.Identity()
        self.feature_info = [
            dict(num_chs=c, reduction=2 ** (i + 1), module=f"layers.{i}") for i, c in enumerate(channels)
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's ``forward_intermediates``: the outputs of the blocks in ``indices`` (last n if an int, all if None),
        ``NCHW``; with ``intermediates_only=False`` also the final map. ``norm`` has no effect (no final norm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"ResNet12 gives NCHW features only, not {output_fmt}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        layers = self.layers[: max_index + 1] if stop_early else self.layers
        intermediates = []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, 640, H/16, W/16]`` (5x5 at 84 px)."""
        return self.layers(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    "resnet12": {
        "url": "", "num_classes": 0, "input_size": (3, 84, 84), "pool_size": (5, 5), "crop_pct": 84 / 92,
        "interpolation": "bilinear", "mean": MINI_IMAGENET_MEAN, "std": MINI_IMAGENET_STD,
        "first_conv": "layers.0.conv1", "classifier": "head", "license": "mit",
    },
})  # fmt: skip


@register_model
def resnet12(pretrained: bool = False, **kwargs) -> ResNet12:
    """ResNet-12 (64-160-320-640, LeakyReLU 0.1) for 84 px few-shot learning; no head unless ``num_classes``."""
    kwargs.setdefault("num_classes", 0)
    feature_cfg = dict(flatten_sequential=True, out_indices=kwargs.pop("out_indices", (0, 1, 2, 3)))
    return build_model_with_cfg(ResNet12, "resnet12", pretrained, feature_cfg=feature_cfg, **kwargs)


__all__ = ["ResNet12", "resnet12"]
