"""Masked image modeling: iTPN (pixels or CLIP features through the feature pyramid) and MVP (CLIP features, ViT).

One LightningModule, three recipes chosen by ``encoder`` and ``target``:

==================  ============================  ====================================================================
recipe              encoder                       what is trained
==================  ============================  ====================================================================
iTPN pixel          ``itpn_*`` (HiViT + pyramid)  MAE random masking (75 %); the encoder runs on the visible patches
                                                  only; P16/P8/P4 -> summed 8-block decoder; normalised-pixel MSE on
                                                  the masked patches (iTPN Sec. 3.3 / MAE Eq. 1)
iTPN CLIP           ``itpn_*``                    BEiT block masking (75 of 196); ``mask_token`` at the stage-3 input;
                                                  pyramid head + auxiliary head from block ``0.75 * depth``;
                                                  SmoothL1 to the CLIP teacher's features on all tokens, weights 1:1
MVP                 ``beit_*`` (timm ViT with     BEiT block masking (~40 %); ``mask_token`` at the input; LN ->
                    rel. pos. bias, layer scale)  Linear head; ``1 - cos`` to the CLIP features at masked positions
==================  ============================  ====================================================================

The CLIP teacher (:class:`~lightning_modules.mim.teacher.ClipTeacher`) is frozen, runs under ``no_grad`` (bf16 on
GPUs) and is kept out of the module tree: it is neither optimised nor saved in checkpoints (it is rebuilt from its
config, a random tiny one deterministically). Code quirks of the official CLIP recipe are reproduced by default and
can be switched (``supervise``, ``teacher.input_scaling``); see docs/itpn.md.

The released pixel pre-training checkpoints (encoder, pyramid and decoder) load by path (``released_checkpoint``,
:mod:`lightning_modules.mim.released`); with ``pos_embed_mode: reference`` and the released masks
(``shared_step(..., masks=...)``) the module reproduces the released ``iTPNMaskedAutoencoder``'s pyramid, prediction
and loss (tests/test_itpn_reference.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from timm.models.beit import Beit
from torch import nn

from datamodules.toy import ensure_written
from datamodules.toy.clip_teacher import write_toy_clip_teacher
from lightning_modules.backbones import check_backbone_name
from lightning_modules.backbones.hivit import HiViT, PosEmbedMode
from lightning_modules.base import SuiteModule
from lightning_modules.mim.heads import PyramidFeatureHead, PyramidPixelDecoder, TokenFeatureHead
from lightning_modules.mim.losses import feature_loss, normalized_patches, patchify, pixel_loss, unpatchify
from lightning_modules.mim.masking import BlockMaskGenerator, random_masking
from lightning_modules.mim.released import load_released_pixel_checkpoint
from lightning_modules.mim.teacher import ClipTeacher
from lightning_modules.optim import OptimConfig
from suite_base.errors import ConfigError


@dataclass
class TeacherConfig:
    """The frozen CLIP vision tower that gives the feature targets (``model.init_args.teacher``).

    Args:
        name_or_path: Hugging Face id or local folder (``openai/clip-vit-base-patch16``; CLIP-L:
            ``openai/clip-vit-large-patch14`` with ``teacher_dim: 768``). Loaded only on machines that have it.
        config: ``CLIPVisionConfig`` arguments for a randomly initialised teacher (tests, toy runs); used when
            ``name_or_path`` is null.
        teacher_dim: the teacher's feature width (512 CLIP-B/16, 768 CLIP-L/14); the heads predict this many.
        image_size: the teacher's input size (224; its patch grid must equal the student's).
        input_scaling: ``beit`` reproduces the official ``[0,1] -> [0.5,1]`` rescaling before CLIP normalisation;
            ``clip`` is plain CLIP normalisation.
        toy_data_root: toy scale only: when ``name_or_path`` does not exist yet, first train a small CLIP vision
            tower on the toy shapes under this root and save it there (:mod:`datamodules.toy.clip_teacher`), a
            stand-in for CLIP's semantic features.
    """

    name_or_path: str | None = "openai/clip-vit-base-patch16"
    config: dict | None = None
    teacher_dim: int = 512
    image_size: int = 224
    input_scaling: Literal["beit", "clip"] = "beit"
    toy_data_root: str | None = None

    def __post_init__(self) -> None:
        # a command-line `--model.init_args.teacher.name_or_path null` can arrive as the string 'None'
        for name in ("name_or_path", "toy_data_root"):
            if isinstance(getattr(self, name), str) and getattr(self, name).strip() in ("None", "null", ""):
                setattr(self, name, None)


class MaskedImageModeling(SuiteModule):
    """Masked image modeling pre-training (iTPN pixel / CLIP, MVP).

    Args:
        encoder: timm name of the encoder: ``itpn_base_3324_patch16_224``, ``itpn_large_2240_patch16_224``,
            ``itpn_large_2240_patch16_256`` (iTPN) or ``beit_base_patch16_224`` / ``beit_large_patch16_224`` (MVP).
        encoder_kwargs: extra constructor arguments (``img_size``, ``embed_dim``, ``depth``, ``rpe``, ``ape``,
            ``ape_init``, ``fpn_depth`` ... for toy sizes and the recipes' switches).
        target: ``pixels`` (iTPN pixel recipe, HiViT only) or ``clip`` (CLIP features).
        mask_type: ``random`` (MAE) or ``block`` (BEiT block-wise).
        mask_ratio: fraction of patches removed by random masking (0.75; 0 feeds every patch to the encoder, the
            baseline of the masking speed-up benchmark, with a zero loss).
        num_mask_patches: patches masked by block masking (75 of 196 in iTPN / MVP).
        min_mask_patches: smallest block (16).
        mask_min_aspect: block aspect-ratio range ``[a, 1/a]`` (0.3).
        norm_pix_loss: normalise each target patch by its mean / std (pixel recipe).
        decoder_dim: pixel decoder width (512).
        decoder_depth: pixel decoder blocks (8).
        decoder_heads: pixel decoder heads (16).
        teacher: the CLIP teacher (``target: clip``).
        feature_loss: ``smooth_l1`` (iTPN) or ``cosine`` (MVP).
        supervise: feature loss over ``all`` tokens (the official iTPN code) or ``masked`` ones (MVP).
        aux_weight: weight of the auxiliary head's loss (iTPN CLIP: 1.0; 0 removes the head).
        aux_blocks: transformer blocks of the auxiliary head (2).
        drop_path_rate: stochastic depth of the encoder.
        init_values: layer-scale init of the encoder (0.1 for the CLIP recipe; None: no layer scale).
        pos_embed_mode: how an iTPN encoder adds its absolute position table to the kept patches: ``exact`` (each
            patch its own row) or ``reference`` (resampled with the released code's ``(Hp + 0.1) / Hp`` scale
            whenever patches are dropped, as the released pixel pre-training ran; see
            :func:`~lightning_modules.backbones.hivit.reference_resample_pos_table`). The pixel pre-training configs
            use ``reference``. Only the pixel recipe drops patches, so the CLIP recipe is the same either way.
        released_checkpoint: path (or glob) of a released iTPN pixel pre-training checkpoint
            (``iTPNMaskedAutoencoder``'s layout: encoder, pyramid and decoder); loaded strictly at construction, to
            evaluate it (``experiments validate``) or to continue pre-training from its weights. A Lightning
            checkpoint of ours resumes with ``--ckpt_path`` instead.
        grad_checkpointing: activation checkpointing of the attention blocks.
        log_images: draw masks and reconstructions (pixels) or feature maps (CLIP) of the first validation and test
            batch (TensorBoard and ``<run>/pictures/<stage>_<target>_epoch<NNN>.png``).
        optim: optimizer and schedule.
        compile: ``torch.compile`` the encoder's token forward.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        encoder: str = "itpn_base_3324_patch16_224",
        encoder_kwargs: dict | None = None,
        target: Literal["pixels", "clip"] = "pixels",
        mask_type: Literal["random", "block"] = "random",
        mask_ratio: float = 0.75,
        num_mask_patches: int = 75,
        min_mask_patches: int = 16,
        mask_min_aspect: float = 0.3,
        norm_pix_loss: bool = True,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        teacher: TeacherConfig | None = None,
        feature_loss: Literal["smooth_l1", "cosine"] = "smooth_l1",
        supervise: Literal["all", "masked"] = "all",
        aux_weight: float = 1.0,
        aux_blocks: int = 2,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        pos_embed_mode: PosEmbedMode = "exact",
        released_checkpoint: str | None = None,
        grad_checkpointing: bool = False,
        log_images: bool = True,
        optim: OptimConfig | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters()
        check_backbone_name(encoder)
        kwargs = dict(encoder_kwargs or {})
        kwargs.setdefault("drop_path_rate", drop_path_rate)
        if init_values is not None:
            kwargs.setdefault("init_values", init_values)
        is_itpn = encoder.startswith(("itpn", "hivit"))
        if is_itpn:
            kwargs.setdefault("num_outs", 3)
            if kwargs.setdefault("pos_embed_mode", pos_embed_mode) != pos_embed_mode:
                raise ConfigError(
                    f"pos_embed_mode is {pos_embed_mode!r} but encoder_kwargs.pos_embed_mode is "
                    f"{kwargs['pos_embed_mode']!r}; set it once, as model.init_args.pos_embed_mode"
                )
        elif pos_embed_mode != "exact":
            raise ConfigError(
                f"pos_embed_mode {pos_embed_mode!r} is the released iTPN code's table resampling and needs an itpn_* "
                f"encoder; encoder '{encoder}' takes pos_embed_mode 'exact'"
            )
        self.encoder = timm.create_model(encoder, pretrained=False, num_classes=0, **kwargs)
        if not isinstance(self.encoder, (HiViT, Beit)):
            raise ConfigError(f"encoder '{encoder}' is neither an iTPN/HiViT nor a BEiT-style ViT (timm 'beit_*')")
        self.is_itpn = isinstance(self.encoder, HiViT)
        if not self.is_itpn and getattr(self.encoder, "fc_norm", None) is not None:
            # timm's BEiT pools through fc_norm, which pre-training never uses (every parameter must get a gradient
            # under DDP); fine-tuning starts it fresh, as BEiT does
            self.encoder.fc_norm = nn.Identity()
        if self.is_itpn and self.encoder.pyramid is None:
            raise ConfigError("the iTPN recipes need the pyramid; leave encoder_kwargs.num_outs at 3")
        if grad_checkpointing:
            self.encoder.set_grad_checkpointing(True)
        self.patch_size = self.encoder.patch_size if self.is_itpn else self.encoder.patch_embed.patch_size[0]
        self.grid = self.encoder.grid if self.is_itpn else self.encoder.patch_embed.grid_size[0]
        self.target = target
        self.mask_type = mask_type
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.feature_loss_kind = feature_loss
        self.supervise = supervise
        self.aux_weight = aux_weight
        self.log_images = log_images
        if mask_type == "block":
            self.block_masks = BlockMaskGenerator(
                self.grid, num_mask_patches, min_num_patches=min_mask_patches, min_aspect=mask_min_aspect
            )
        elif mask_type == "random":
            if not 0 <= mask_ratio < 1:  # 0 runs the encoder on every patch (the benchmark's baseline)
                raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        else:
            raise ConfigError(f"mask_type must be 'random' or 'block', got {mask_type!r}")
        embed_dim = self.encoder.embed_dim
        if target == "pixels":
            if not self.is_itpn or mask_type != "random":
                raise ConfigError("target 'pixels' is iTPN's pixel recipe: an itpn_* encoder with mask_type 'random'")
            self.decoder = PyramidPixelDecoder(
                self.encoder.pyramid.fpn_dim, self.grid, self.patch_size, decoder_dim, decoder_depth, decoder_heads
            )
        elif target == "clip":
            if mask_type != "block":
                raise ConfigError("target 'clip' masks the stage-3 / ViT input with mask_type 'block'")
            teacher = teacher if teacher is not None else TeacherConfig()
            if teacher.toy_data_root and teacher.name_or_path and not Path(teacher.name_or_path).exists():
                ensure_written(teacher.name_or_path, write_toy_clip_teacher, data_root=teacher.toy_data_root)
            self.__dict__["teacher"] = ClipTeacher(  # outside the module tree: not optimised, not checkpointed
                name_or_path=teacher.name_or_path,
                config=None if teacher.name_or_path else teacher.config,
                teacher_dim=teacher.teacher_dim,
                image_size=teacher.image_size,
                input_scaling=teacher.input_scaling,
            )
            if self.teacher.grid != self.grid:
                raise ConfigError(
                    f"the teacher gives a {self.teacher.grid}x{self.teacher.grid} token grid at teacher.image_size "
                    f"{teacher.image_size} but the student has {self.grid}x{self.grid} patches; set teacher.image_size "
                    f"to {self.grid} x the teacher's patch size"
                )
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            if self.is_itpn:
                depth = self.encoder.depth
                self.aux_index = int(0.75 * depth)
                rates = torch.linspace(0, drop_path_rate, sum(self.encoder.mlp_depths) + depth, device="cpu").tolist()
                first = sum(self.encoder.mlp_depths) + self.aux_index
                self.head = PyramidFeatureHead(
                    embed_dim,
                    self.encoder.pyramid.fpn_dim,
                    teacher.teacher_dim,
                    self.encoder.blocks[-1].attn.num_heads,
                    self.grid,
                    aux_blocks if aux_weight > 0 else 0,
                    init_values,
                    (rates + [drop_path_rate] * aux_blocks)[first : first + aux_blocks],
                    rpe=self.encoder.relative_position_index is not None,
                )
            else:
                self.head = TokenFeatureHead(embed_dim, teacher.teacher_dim)
        else:
            raise ConfigError(f"target must be 'pixels' or 'clip', got {target!r}")
        self.__dict__["_tokens_fn"] = (
            torch.compile(self.encoder.forward_tokens) if compile and self.is_itpn else self._encoder_tokens
        )
        if released_checkpoint:
            load_released_pixel_checkpoint(self, released_checkpoint)

    # ---- encoder passes ----------------------------------------------------------------------------------------
    def _encoder_tokens(self, images, **kwargs):
        return self.encoder.forward_tokens(images, **kwargs)

    def _vit_tokens(self, images: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """BEiT-style masked forward of a timm ViT: mask tokens replace masked patch embeddings at the input."""
        enc = self.encoder
        x = enc.patch_embed(images)
        w = bool_masked_pos.unsqueeze(-1).to(x.dtype)
        x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat([enc.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        x = enc.pos_drop(x)
        rel_pos_bias = enc.rel_pos_bias() if enc.rel_pos_bias is not None else None
        for blk in enc.blocks:
            x = blk(x, shared_rel_pos_bias=rel_pos_bias)
        return enc.norm(x)[:, 1:]

    def _masks(self, batch_size: int, device, seed: int | None):
        """Random (ids_keep, ids_restore, mask) or block ``[B, N]`` masks; seeded (CPU generator) when ``seed``."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dev = "cpu" if gen is not None else device
        if self.mask_type == "random":
            masks = random_masking(batch_size, self.grid**2, self.mask_ratio, device=dev, generator=gen)
            return tuple(m.to(device) for m in masks)
        return self.block_masks(batch_size, device=dev, generator=gen).to(device)

    def _teacher_images(self, batch: dict) -> torch.Tensor:
        if "teacher_image" in batch:
            return batch["teacher_image"]
        dm = self.trainer.datamodule if self._trainer is not None else None
        mean = torch.tensor(getattr(dm, "mean", (0.5, 0.5, 0.5)), device=batch["image"].device).view(1, 3, 1, 1)
        std = torch.tensor(getattr(dm, "std", (0.5, 0.5, 0.5)), device=batch["image"].device).view(1, 3, 1, 1)
        return (batch["image"].float() * std + mean).clamp(0, 1)

    def _check_given_masks(self, masks, batch_size: int) -> None:
        n = self.grid**2
        if self.target == "pixels":
            if not isinstance(masks, (tuple, list)) or len(masks) != 3 or not all(torch.is_tensor(m) for m in masks):
                raise ValueError("the pixel recipe takes masks=(ids_keep [B, L], ids_restore [B, N], mask [B, N])")
            ids_keep, ids_restore, mask = masks
            shapes = (tuple(ids_keep.shape), tuple(ids_restore.shape), tuple(mask.shape))
            if ids_keep.ndim != 2 or shapes[0][0] != batch_size or shapes[1:] != ((batch_size, n),) * 2:
                raise ValueError(
                    f"masks have shapes {shapes}; expected ids_keep [{batch_size}, L], ids_restore and mask "
                    f"[{batch_size}, {n}] for this {self.grid}x{self.grid} grid"
                )
            if not torch.all(mask.bool().sum(1) == n - ids_keep.shape[1]):
                raise ValueError(f"every mask row must mask N - L = {n - ids_keep.shape[1]} patches (1 = masked)")
        elif not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (batch_size, n):
            raise ValueError(f"block masking takes masks as a [B, N] = [{batch_size}, {n}] tensor, True = masked")

    def shared_step(self, batch: dict, seed: int | None = None, masks=None) -> dict:
        """Loss terms (and what the image logger needs) of one batch.

        Args:
            batch: ``{"image": [B, 3, H, W]}`` (plus ``teacher_image`` for the CLIP recipes).
            seed: fixes the drawn masks (validation).
            masks: use these masks instead of drawing them: ``(ids_keep [B, L], ids_restore [B, N], mask [B, N])``
                for the pixel recipe (MAE's / the released ``masking_id``'s triple, mask 1 = removed), a ``[B, N]``
                boolean mask for block masking. The pixel terms then also hold the pyramid ``levels`` (P16, P8, P4
                of the kept patches, ``[B, L, h, w, F]``), as the released ``forward_features(images, ids_keep)``.
        """
        images = batch["image"]
        B = images.shape[0]
        if masks is not None:
            self._check_given_masks(masks, B)
        if self.target == "pixels":
            ids_keep, ids_restore, mask = masks if masks is not None else self._masks(B, images.device, seed)
            out = self._tokens_fn(images, ids_keep=ids_keep)
            levels = self.encoder.pyramid(out.tokens, out.laterals)
            pred = self.decoder(levels, ids_restore)
            target = patchify(images, self.patch_size)
            loss = pixel_loss(pred, target, mask, self.norm_pix_loss)
            return {"loss": loss, "pred": pred, "mask": mask, "target": target, "levels": levels}
        mask = masks if masks is not None else self._masks(B, images.device, seed)
        teacher = self.teacher
        if next(teacher.parameters()).device != images.device:
            teacher.to(images.device)
        target = teacher(self._teacher_images(batch))
        only = mask if self.supervise == "masked" else None
        if self.is_itpn:
            collect = (self.aux_index,) if self.aux_weight > 0 else ()
            out = self._tokens_fn(images, bool_masked_pos=mask, mask_token=self.mask_token, collect=collect)
            levels = self.encoder.pyramid(out.tokens, out.laterals)
            aux_in = out.collected.get(self.aux_index, out.tokens)
            pred, aux = self.head(levels, aux_in, out.rpe_index)
            loss_main = feature_loss(pred, target, self.feature_loss_kind, only)
            terms = {"loss_main": loss_main, "pred": pred, "mask": mask, "target": target}
            if self.aux_weight > 0:
                terms["loss_aux"] = feature_loss(aux, target, self.feature_loss_kind, only)
                terms["loss"] = loss_main + self.aux_weight * terms["loss_aux"]
            else:
                terms["loss"] = loss_main
            return terms
        pred = self.head(self._vit_tokens(images, mask))
        loss = feature_loss(pred, target, self.feature_loss_kind, only)
        return {"loss": loss, "pred": pred, "mask": mask, "target": target}

    def flop_forward(self, batch: dict) -> torch.Tensor:
        """The training forward (masking, encoder on the kept patches, teacher, heads) for FLOP counting."""
        return self.shared_step(batch)["loss"]

    # ---- Lightning hooks ---------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        size = getattr(self.trainer.datamodule, "img_size", None) if self._trainer is not None else None
        if size is not None and size % self.patch_size:
            raise ConfigError(
                f"data.img_size {size} is not a multiple of the patch size {self.patch_size}; use e.g. "
                f"{(size // self.patch_size) * self.patch_size} or {(size // self.patch_size + 1) * self.patch_size}"
            )
        if size is not None and size // self.patch_size != self.grid:
            raise ConfigError(
                f"data.img_size {size} gives a {size // self.patch_size}x{size // self.patch_size} grid but the "
                f"encoder was built for {self.grid}x{self.grid}; set encoder_kwargs.img_size {size}"
            )

    def _log_terms(self, terms: dict, stage: str, batch_size: int) -> None:
        sync = stage != "train"
        self.log(f"{stage}/loss", terms["loss"], prog_bar=True, sync_dist=sync, batch_size=batch_size)
        for key in ("loss_main", "loss_aux"):
            if key in terms:
                self.log(f"{stage}/{key}", terms[key], sync_dist=sync, batch_size=batch_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.shared_step(batch)
        B = batch["image"].shape[0]
        self._log_terms(terms, "train", B)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=B)
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.shared_step(batch, seed=batch_idx)
        self._log_terms(terms, "val", batch["image"].shape[0])
        if batch_idx == 0 and self.log_images and self._trainer is not None:
            self.log_image_grid(f"val/{self.target}", self.visualise(batch, terms), nrow=8)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.shared_step(batch, seed=batch_idx)
        self._log_terms(terms, "test", batch["image"].shape[0])
        if batch_idx == 0 and self.log_images and self._trainer is not None:
            self.log_image_grid(f"test/{self.target}", self.visualise(batch, terms), nrow=8)

    # ---- pictures ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def visualise(self, batch: dict, terms: dict, n: int = 8) -> torch.Tensor:
        """Rows of ``n`` images in [0, 1]: input, masked input, then the reconstruction (pixels) or the teacher's and
        the prediction's features projected on the teacher's first three principal components (CLIP)."""
        images = self._teacher_images({"image": batch["image"][:n]}).float()
        n, p = images.shape[0], self.patch_size
        g = (images.shape[-2] // p, images.shape[-1] // p)
        mask = terms["mask"][:n].float()
        patch_mask = unpatchify(mask[:, :, None].expand(-1, -1, p * p * 3), p, g)
        masked = images * (1 - patch_mask) + 0.5 * patch_mask
        rows = [images, masked]
        if self.target == "pixels":
            pred = terms["pred"][:n].float()
            if self.norm_pix_loss:
                _, mean, std = normalized_patches(terms["target"][:n].float())
                pred = pred * std + mean
            recon = self._teacher_images({"image": unpatchify(pred, p, g)}).float()
            rows += [recon, images * (1 - patch_mask) + recon * patch_mask]
        else:
            teacher, pred = terms["target"][:n].float(), terms["pred"][:n].float()
            centre = teacher.reshape(-1, teacher.shape[-1]).mean(0)
            _, _, v = torch.pca_lowrank(teacher.reshape(-1, teacher.shape[-1]) - centre, q=3, center=False)
            for feats in (teacher, pred):
                proj = (feats - centre) @ v[:, :3]
                lo, hi = proj.amin(dim=(0, 1)), proj.amax(dim=(0, 1))
                proj = ((proj - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
                maps = proj.transpose(1, 2).reshape(n, 3, *g)
                rows.append(F.interpolate(maps, size=images.shape[-2:], mode="nearest"))
        return torch.cat(rows, dim=0)
