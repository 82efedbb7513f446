"""STT, the Spatiotemporal Transformer for video person re-ID (Zhang et al., arXiv 2103.16469), as ``nn.Module`` s.

No code was released and the architecture's sizes are not public (``../shared/papers/reid_and_frameworks.md`` A.3);
what the paper's text establishes and what we chose is listed in ``docs/stt.md``. In short::

    clip [B, T, 3, H, W] --CNN (timm ResNet-50, last stride 1)--> [B*T, C, h, w] --1x1 conv--> [B*T, h*w, D]
      Spatial Transformer (ST): per frame, [cls_s; h*w tokens] + spatial position   -> frame cls f_s [B, T, D]
                                                                                       patch tokens  [B, T, h*w, D]
      Temporal Transformer (TT): per clip, [cls_t; f_s(1..T)] + temporal position   -> f_t [B, D], attention a [B, T]
      Global Transformer (GT): per clip, [cls_g; all T*h*w patch tokens] + position -> f_g [B, D]
      clip feature = [f_t; f_g] [B, 2D] -> BNNeck -> identity classifier

ST attends only within a frame and TT only across frames' summaries (the factorisation the paper credits with less
over-fitting); GT lets a patch in one frame attend to patches of every other frame. The *perception constraints*
are auxiliary heads read here and turned into losses in :mod:`lightning_modules.reid.losses`: the frame cls f_s and
``parts`` horizontal stripes of ST's patch tokens are classified (spatial constraint), and TT's attention ``a`` of
the temporal cls over the frames is returned for the temporal attention term.

Attention runs through timm's ``Block`` (``F.scaled_dot_product_attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from lightning_modules.backbones import create_backbone
from suite_base.errors import ConfigError


def set_last_stride_one(cnn: nn.Module) -> None:
    """Remove the stride of a timm ResNet's last stage (the re-ID convention: a 256x128 frame gives a 16x8 map).

    The stride sits in the first block of ``layer4``: its 3x3 conv (Bottleneck ``conv2``, BasicBlock ``conv1``) and
    its 1x1 shortcut conv."""
    layer = getattr(cnn, "layer4", None)
    if layer is None:
        raise ConfigError(f"last_stride_one needs a ResNet with a 'layer4' stage; {type(cnn).__name__} has none")
    first = layer[0]
    for name in ("conv1", "conv2"):
        conv = getattr(first, name, None)
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            conv.stride = (1, 1)
    if first.downsample is not None:
        for module in first.downsample.modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (1, 1)
            elif isinstance(module, nn.AvgPool2d):  # ResNet-D shortcuts pool instead
                module.stride, module.kernel_size = 1, 1


class BNNeck(nn.Module):
    """BNNeck (Luo et al., "Bag of Tricks", 2019): ``BatchNorm1d`` without a learned shift, then a bias-free linear
    classifier. The triplet loss reads the feature before the norm, cross-entropy the logits after it, and retrieval
    the normalised feature."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.norm.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, D]`` -> (normalised feature ``[B, D]``, logits ``[B, classes]``)."""
        normed = self.norm(feature)
        return normed, self.classifier(normed)


class TokenTransformer(nn.Module):
    """A class token, learned position embeddings and ``depth`` pre-norm timm blocks over ``[N, L, D]`` tokens."""

    def __init__(self, dim: int, length: int, depth: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, length + 1, dim))
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=rate) for rate in rates
        )
        self.norm = nn.LayerNorm(dim)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    def forward(self, tokens: Tensor, extra_pos: Tensor | None = None) -> Tensor:
        """``[N, L, D]`` -> ``[N, 1 + L, D]`` (class token first), after the final norm."""
        pos = self.pos_embed if extra_pos is None else self.pos_embed + extra_pos
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], 1) + pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def cls_attention(self, tokens: Tensor) -> Tensor:
        """Attention of the class token over the other tokens in the last block, averaged over heads: ``[N, L]``.

        Recomputed from the block's own ``qkv`` projection (the fused SDPA kernel does not return weights); only the
        class token's query row is formed, so it costs ``O(L)``."""
        pos = self.pos_embed
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], 1) + pos
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        attn = last.attn
        N, L, D = x.shape
        qkv = attn.qkv(last.norm1(x)).reshape(N, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])  # [N, heads, 1, hd], [N, heads, L, hd]
        weights = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)  # [N, heads, 1, L]
        return weights[:, :, 0, 1:].mean(1)


class SpatioTemporalTransformer(nn.Module):
    """The STT re-ID model (module docstring): CNN stem, ST, TT and GT, BNNeck, and the constraint heads.

    Args:
        num_classes: training identities.
        backbone: timm CNN name (``resnet50`` in the paper's field; ``resnet18`` at toy scale).
        pretrained: backbone weights: a local checkpoint, a hub id, or None (random init).
        backbone_kwargs: extra timm constructor arguments (the toy narrows the ResNet: ``channels``, ``stem_width``).
        last_stride_one: remove the last stage's stride (feature stride 16 instead of 32).
        img_size: ``(H, W)`` of the frames (fixes the number of spatial tokens).
        seq_len: frames per clip ``T`` (fixes TT's length).
        embed_dim: transformer width ``D``.
        heads: attention heads of every transformer.
        spatial_depth / temporal_depth / global_depth: blocks of ST / TT / GT (``global_depth: 0`` removes GT).
        parts: horizontal stripes of the spatial part classification (PCB-style).
        mlp_ratio / drop_path: of the transformer blocks.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: str | None = None,
        backbone_kwargs: dict | None = None,
        last_stride_one: bool = True,
        img_size: tuple[int, int] = (256, 128),
        seq_len: int = 8,
        embed_dim: int = 512,
        heads: int = 8,
        spatial_depth: int = 2,
        temporal_depth: int = 2,
        global_depth: int = 2,
        parts: int = 4,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        self.cnn = create_backbone(
            backbone,
            pretrained,
            weights_key="model.init_args.net.init_args.pretrained",
            num_classes=0,
            global_pool="",
            **(backbone_kwargs or {}),
        )
        if last_stride_one:
            set_last_stride_one(self.cnn)
        with torch.no_grad():
            probe = self.cnn(torch.zeros(1, 3, *tuple(img_size)))
        channels, h, w = probe.shape[1:]
        if h < parts:
            raise ConfigError(
                f"{parts} part stripes need at least {parts} feature rows; {img_size} frames give {h}x{w} with "
                f"{backbone}. Use taller frames or fewer parts."
            )
        self.grid = (h, w)
        self.num_classes = num_classes
        self.img_size = tuple(img_size)
        self.seq_len = seq_len
        self.parts = parts
        self.embed_dim = embed_dim
        self.project = nn.Conv2d(channels, embed_dim, 1)
        self.spatial = TokenTransformer(embed_dim, h * w, spatial_depth, heads, mlp_ratio, drop_path)
        self.temporal = TokenTransformer(embed_dim, seq_len, temporal_depth, heads, mlp_ratio, drop_path)
        self.use_global = global_depth > 0
        if self.use_global:
            self.global_ = TokenTransformer(embed_dim, seq_len * h * w, global_depth, heads, mlp_ratio, drop_path)
        feature_dim = embed_dim * (2 if self.use_global else 1)
        self.neck = BNNeck(feature_dim, num_classes)
        self.frame_neck = BNNeck(embed_dim, num_classes)
        self.part_necks = nn.ModuleList(BNNeck(embed_dim, num_classes) for _ in range(parts))
        self.feature_dim = feature_dim
        self.channels_last = False  # set with the CNN's memory format (STTModule's channels_last)

    def encode_frames(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        """ST over every frame of ``clips [B, T, 3, H, W]``: frame cls ``[B, T, D]`` and patch tokens
        ``[B, T, h*w, D]``."""
        B, T = clips.shape[:2]
        if T != self.seq_len:
            raise ValueError(f"clips have {T} frames but the model was built for seq_len {self.seq_len}")
        frames = clips.flatten(0, 1)
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        maps = self.project(self.cnn(frames))  # [B*T, D, h, w]
        if maps.shape[-2:] != self.grid:
            raise ValueError(f"frames give a {tuple(maps.shape[-2:])} feature map, the model expects {self.grid}")
        tokens = self.spatial(maps.flatten(2).transpose(1, 2))  # [B*T, 1 + h*w, D]
        tokens = tokens.view(B, T, *tokens.shape[1:])
        return tokens[:, :, 0], tokens[:, :, 1:]

    def part_features(self, patches: Tensor) -> Tensor:
        """Average-pool ST's patch tokens ``[B, T, h*w, D]`` over ``parts`` horizontal stripes: ``[B, T, P, D]``."""
        B, T, _, D = patches.shape
        h, w = self.grid
        rows = patches.reshape(B, T, h, w, D).mean(3)  # [B, T, h, D]
        return (
            F.adaptive_avg_pool1d(rows.flatten(0, 1).transpose(1, 2), self.parts)
            .transpose(1, 2)
            .view(B, T, self.parts, D)
        )

    def forward(self, clips: Tensor) -> dict[str, Tensor]:
        """``clips [B, T, 3, H, W]`` -> a dict:

        ``feature [B, F]`` (pre-BN clip feature), ``embedding [B, F]`` (post-BN, for retrieval), ``logits [B, C]``,
        ``frame_feature [B, T, D]`` and ``frame_logits [B, T, C]`` (ST's frame cls), ``part_logits [B, T, P, C]``,
        ``temporal_attention [B, T]`` (TT's class-token attention over frames, last block)."""
        frame_cls, patches = self.encode_frames(clips)
        temporal = self.temporal(frame_cls)[:, 0]
        features = [temporal]
        if self.use_global:
            B, T, L, D = patches.shape
            features.append(self.global_(patches.reshape(B, T * L, D))[:, 0])
        feature = torch.cat(features, 1)
        embedding, logits = self.neck(feature)
        out = {"feature": feature, "embedding": embedding, "logits": logits, "frame_feature": frame_cls}
        if self.training:
            B, T, D = frame_cls.shape
            out["frame_logits"] = self.frame_neck(frame_cls.reshape(B * T, D))[1].view(B, T, -1)
            parts = self.part_features(patches)
            out["part_logits"] = torch.stack([neck(parts[:, :, p].flatten(0, 1))[1] for p, neck in
                                              enumerate(self.part_necks)], 2).view(B, T, self.parts, -1)  # fmt: skip
            out["temporal_attention"] = self.temporal.cls_attention(frame_cls)
        return out

    def num_tokens(self) -> dict[str, int]:
        """Sequence lengths of the three transformers (with their class tokens)."""
        h, w = self.grid
        return {"spatial": h * w + 1, "temporal": self.seq_len + 1, "global": self.seq_len * h * w + 1}
