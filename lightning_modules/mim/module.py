"""Masked image modeling: iTPN (pixels or CLIP features through the feature pyramid) and MVP (CLIP features, ViT).

One LightningModule, three recipes chosen by the injected ``encoder`` and ``target``:

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

The networks are injected by the config: the encoder (:func:`~lightning_modules.mim.encoders.mim_encoder`) and, for
the CLIP targets, the teacher (:class:`~lightning_modules.mim.teacher.ClipTeacher`). The teacher is frozen, runs under
``no_grad`` (bf16 on GPUs) and is kept out of the module tree: it is neither optimised nor saved in checkpoints (it
is rebuilt from its config, a random tiny one deterministically). Code quirks of the official CLIP recipe are
reproduced by default and can be switched (``supervise``, the teacher's ``input_scaling``); see docs/itpn.md.

The released pixel pre-training checkpoints (encoder, pyramid and decoder) load by path (``released_checkpoint``,
:mod:`lightning_modules.mim.released`); with the encoder's ``pos_embed_mode: reference`` and the released masks
(``shared_step(..., masks=...)``) the module reproduces the released ``iTPNMaskedAutoencoder``'s pyramid, prediction
and loss (tests/lightning_modules/mim/test_itpn_reference.py).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.base import SuiteModule
from lightning_modules.mim.heads import PyramidFeatureHead, PyramidPixelDecoder, TokenFeatureHead
from lightning_modules.mim.losses import (
    clip_feature_terms,
    feature_loss,
    normalized_patches,
    patchify,
    pixel_loss,
    unpatchify,
)
from lightning_modules.mim.masking import BlockMaskGenerator, random_masking
from lightning_modules.mim.released import load_released_pixel_checkpoint
from lightning_modules.mim.teacher import ClipTeacher
from lightning_modules.optim import OptimConfig
from suite_base.errors import ConfigError


def patch_grid(encoder: nn.Module) -> tuple[int, int]:
    """``(patch size, grid side)`` of a square-input encoder. timm's feature API gives the patch size (the last
    level's ``feature_info`` reduction) but not the input size, so the grid is the model's own (``HiViT.grid``, timm
    ViTs' ``patch_embed.grid_size``)."""
    patch_size = int(encoder.feature_info[-1]["reduction"])
    grid = getattr(encoder, "grid", None)
    return patch_size, int(grid if grid is not None else encoder.patch_embed.grid_size[0])


def drop_path_rates(encoder: nn.Module) -> list[float]:
    """Stochastic-depth rate of each transformer / MLP block of ``encoder.blocks`` in order (0 where it has none;
    HiViT's patch merges between the stages have no rate)."""
    blocks = [blk for blk in encoder.blocks if hasattr(blk, "drop_path")]
    return [float(getattr(blk.drop_path, "drop_prob", 0.0)) for blk in blocks]


def layer_scale_init(encoder: nn.Module) -> float | None:
    """The layer-scale init of a freshly built encoder (its last block's ``gamma_2``), None without layer scale."""
    gamma = getattr(encoder.blocks[-1], "gamma_2", None)
    return float(gamma.detach().flatten()[0]) if gamma is not None else None


class MaskedImageModeling(SuiteModule):
    """Masked image modeling pre-training (iTPN pixel / CLIP, MVP).

    Args:
        encoder: the network pre-trained: an iTPN (HiViT with its feature pyramid) or a BEiT-style timm ViT, built
            by :func:`~lightning_modules.mim.encoders.mim_encoder` (model name, sizes, drop path, layer scale,
            position-table mode). The heads read its widths, depth, drop path rates and layer scale.
        teacher: the frozen CLIP teacher giving the feature targets (``target: clip``); None for pixels.
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
        feature_loss: ``smooth_l1`` (iTPN) or ``cosine`` (MVP).
        supervise: feature loss over ``all`` tokens (the official iTPN code) or ``masked`` ones (MVP).
        aux_weight: weight of the auxiliary head's loss (iTPN CLIP: 1.0; 0 removes the head).
        aux_blocks: transformer blocks of the auxiliary head (2).
        released_checkpoint: path (or glob) of a released iTPN pixel pre-training checkpoint
            (``iTPNMaskedAutoencoder``'s layout: encoder, pyramid and decoder); loaded strictly at construction, to
            evaluate it (``experiments validate``) or to continue pre-training from its weights. A Lightning
            checkpoint of ours resumes with ``--ckpt_path`` instead.
        grad_checkpointing: activation checkpointing of the encoder's attention blocks.
        log_images: draw masks and reconstructions (pixels) or feature maps (CLIP) of the first validation and test
            batch (TensorBoard and ``<run>/pictures/<stage>_<target>_epoch<NNN>.png``).
        optim: optimizer and schedule.
        compile: ``torch.compile`` the encoder's token forward.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        encoder: nn.Module,
        *,
        teacher: ClipTeacher | None = None,
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
        feature_loss: Literal["smooth_l1", "cosine"] = "smooth_l1",
        supervise: Literal["all", "masked"] = "all",
        aux_weight: float = 1.0,
        aux_blocks: int = 2,
        released_checkpoint: str | None = None,
        grad_checkpointing: bool = False,
        log_images: bool = True,
        optim: OptimConfig | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(optim=optim)
        self.save_hyperparameters_with_networks()
        self.encoder = encoder
        # iTPN's recipes need its feature pyramid over the stage outputs with masked tokens, which timm's feature API
        # (feature_info / forward_intermediates: the three stage outputs of the whole image) cannot return: an
        # encoder with a pyramid runs forward_tokens + pyramid, a ViT the BEiT-style masked pass (_vit_tokens)
        self.is_itpn = getattr(encoder, "pyramid", None) is not None
        if grad_checkpointing:
            self.encoder.set_grad_checkpointing(True)
        self.patch_size, self.grid = patch_grid(encoder)
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
            if teacher is not None:
                raise ConfigError("target 'pixels' takes no teacher; remove model.init_args.teacher")
            self.decoder = PyramidPixelDecoder(
                self.encoder.pyramid.fpn_dim, self.grid, self.patch_size, decoder_dim, decoder_depth, decoder_heads
            )
        elif target == "clip":
            if mask_type != "block":
                raise ConfigError("target 'clip' masks the stage-3 / ViT input with mask_type 'block'")
            if teacher is None:
                raise ConfigError(
                    "target 'clip' needs model.init_args.teacher (class_path lightning_modules.mim.teacher."
                    "ClipTeacher, init_args name_or_path: openai/clip-vit-base-patch16)"
                )
            self.__dict__["teacher"] = teacher  # outside the module tree: not optimised, not checkpointed
            if teacher.grid != self.grid:
                raise ConfigError(
                    f"the teacher gives a {teacher.grid}x{teacher.grid} token grid at its image_size "
                    f"{teacher.image_size} but the student has {self.grid}x{self.grid} patches; set the teacher's "
                    f"image_size to {self.grid} x its patch size"
                )
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            if self.is_itpn:
                depth = self.encoder.depth
                self.aux_index = int(0.75 * depth)
                # the auxiliary blocks continue the encoder's stochastic depth from block 0.75 * depth (the official
                # rates list, padded with the last rate) and its layer scale
                rates = drop_path_rates(self.encoder)
                first = sum(self.encoder.mlp_depths) + self.aux_index
                self.head = PyramidFeatureHead(
                    embed_dim,
                    self.encoder.pyramid.fpn_dim,
                    teacher.teacher_dim,
                    self.encoder.blocks[-1].attn.num_heads,
                    self.grid,
                    aux_blocks if aux_weight > 0 else 0,
                    layer_scale_init(self.encoder),
                    (rates + [rates[-1]] * aux_blocks)[first : first + aux_blocks],
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

    def _masks(self, batch_size: int, device, seed: int | torch.Tensor | None):
        """Random (ids_keep, ids_restore, mask) or block ``[B, N]`` masks; seeded (CPU generator) when ``seed``: an
        int seeds the batch's draw, a ``[B]`` tensor each sample's own (validation: the dataset index, so a sample
        gets the same mask in whichever process and batch it is read)."""
        if isinstance(seed, torch.Tensor):
            rows = [self._masks(1, device, int(s)) for s in seed.tolist()]
            if self.mask_type == "random":
                return tuple(torch.cat(parts) for parts in zip(*rows, strict=True))
            return torch.cat(rows)
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
            seed: fixes the drawn masks (validation): an int for the batch, a ``[B]`` tensor per sample.
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
            terms = clip_feature_terms(
                pred, aux if self.aux_weight > 0 else None, target, self.feature_loss_kind, only, self.aux_weight
            )
            return {**terms, "pred": pred, "mask": mask, "target": target}
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
                f"encoder was built for {self.grid}x{self.grid}; set model.init_args.encoder.init_args.kwargs.img_size "
                f"{size}"
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

    @staticmethod
    def eval_seed(batch: dict, batch_idx: int) -> int | torch.Tensor:
        """Evaluation masks: drawn from each sample's dataset ``index`` (the same under any number of processes:
        DDP validation equals one process's), else from the batch index."""
        return batch["index"] if "index" in batch else batch_idx

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.shared_step(batch, seed=self.eval_seed(batch, batch_idx))
        self._log_terms(terms, "val", batch["image"].shape[0])
        if batch_idx == 0 and self.log_images and self._trainer is not None:
            self.log_image_grid(f"val/{self.target}", self.visualise(batch, terms), nrow=8)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.shared_step(batch, seed=self.eval_seed(batch, batch_idx))
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
