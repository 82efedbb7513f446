"""DE-Net training (arXiv 2206.01160): two optimisers under Lightning's manual optimisation.

DE-Net's loss code (``lib/modules.py``) was never released (``../shared/papers/loupe_tel_denet.md`` section 3); the
terms below follow its lineage (DF-GAN's discriminator, AttnGAN's DAMSM, ManiGAN-style content keeping) and every
weight is ours (docs/denet.md). For a source image ``x`` with its caption ``s``, an editing target text ``t``
(another image's caption, or the toy's recoloured caption) and a mismatched caption ``w``, with ``D`` the
discriminator features, ``C`` the text-conditioned head and ``G`` the generator:

* discriminator (DF-GAN's hinge loss with the matching-aware zero-centred gradient penalty, MA-GP)::

      L_D = relu(1 - C(D(x), s)) + 1/2 [relu(1 + C(D(G(x, t)), t)) + relu(1 + C(D(x), w))]
            + k E[ ||grad_(x, s) C(D(x), s)||_2^p ]            (k = 2, p = 6)

* generator::

      L_G = -C(D(G(x, t)), t) + lambda_damsm L_DAMSM(G(x, t), t) + lambda_rec |G(x, s) - x|_1
            + lambda_keep |G(x, t) - x|_1

  ``L_DAMSM`` is AttnGAN's word + sentence matching loss of the edited images against their target texts in the
  frozen pre-trained DAMSM space (text-image matching); the reconstruction term asks a caption that already
  describes the image to change nothing, and the optional keep term bounds what an edit may change (text-irrelevant
  content). Optimisers: Adam with betas (0.0, 0.9), lr 1e-4 (G) and 4e-4 (D + head), as the official ``train.py``.

Validation and test: manipulative precision ``mp`` and ``rmp`` against the target texts (DAMSM space; with
``clip_model`` also ``c_sim``, ``mp_c`` and ``rmp_c`` in CLIP space, DE-Net's ``train.py`` names), FID of the edited
images against the sources, and an editing grid (source | target text | edited) for fixed examples, logged and saved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.backbones import resolve_checkpoint_path
from lightning_modules.base import SuiteModule
from lightning_modules.editing.damsm import DAMSM, DAMSM_CHECKPOINT_KEY, check_vocabulary
from lightning_modules.editing.losses import (
    damsm_losses,
    discriminator_objective,
    generator_objective,
    hinge_d_loss,
    hinge_g_loss,
    l1_distance,
    matching_aware_penalty,
)
from lightning_modules.editing.metrics import ClipEditScorer, ManipulativePrecision, fid_metric
from lightning_modules.editing.networks import ConditionalHead, DENetDiscriminator, DENetGenerator
from lightning_modules.editing.released import load_released_denet
from suite_base.errors import ConfigError

# (sources [N, 3, S, S], edited [N, 3, S, S] in [0, 1], the scenes' objects, target captions) -> named scores
EditScorer = Callable[[Tensor, Tensor, list[dict], list[str]], dict[str, float]]


def text_panel(texts: list[str], size: int, width_scale: int = 3) -> Tensor:
    """White panels ``[N, 3, size, width_scale * size]`` with each text wrapped in black (for editing grids)."""
    import textwrap

    from PIL import Image, ImageDraw
    from torchvision.transforms.functional import pil_to_tensor

    panels = []
    chars = max(8, width_scale * size // 7)
    for text in texts:
        canvas = Image.new("RGB", (width_scale * size, size), "white")
        ImageDraw.Draw(canvas).multiline_text((3, 2), "\n".join(textwrap.wrap(text, chars)), fill="black", spacing=1)
        panels.append(pil_to_tensor(canvas).float() / 255)
    return torch.stack(panels)


class DENet(SuiteModule):
    """DE-Net: text-guided image editing GAN.

    Args:
        generator: :class:`DENetGenerator` (``ngf``, ``image_size``; its ``cond_dim`` must be the DAMSM's width).
        discriminator: :class:`DENetDiscriminator` (``ndf``, the generator's ``image_size``); the conditional head
            is built from it and the DAMSM's width.
        damsm: the pre-trained DAMSM, frozen (in configs :func:`~lightning_modules.editing.damsm.frozen_damsm`: a
            pre-training ``checkpoint``, a path or a glob such as ``runs/toy_damsm/version_*/checkpoints/best.ckpt``
            whose newest match loads, or AttnGAN's / DF-GAN's ``released_text_encoder`` and
            ``released_image_encoder``, the encoders the paper used); its text encoder conditions G and D, its
            encoders score edits.
        lambda_damsm: weight of the DAMSM matching loss of edited images.
        lambda_rec: weight of the reconstruction under the image's own caption.
        lambda_keep: weight of the L1 between edited and source images (0: off).
        gp_weight, gp_power: MA-GP's ``k`` and ``p`` (DF-GAN: 2 and 6).
        lr_g, lr_d, betas: Adam settings (official: 1e-4, 4e-4, (0.0, 0.9)).
        grid_examples: fixed validation examples drawn in the editing grid (0: none).
        fid: compute FID at validation and test.
        fid_backbone, fid_pretrained, fid_input_size: FID feature extractor (``inception``: torchmetrics'
            InceptionV3, needs its weights; any timm name: a frozen timm backbone, offline).
        clip_model: a transformers CLIP (hub id in the local cache, or a folder) for the CLIP-space metrics
            ``c_sim``, ``mp_c`` and ``rmp_c`` (None: not computed; nothing downloads).
        init_from: a released DE-Net checkpoint (tobran/DE-Net ``train.py``'s ``state_epoch_<N>.pth``, or a bare
            NetG state dict) loaded into G, D and the head (``released.py``; needs image_size 256, its ngf / ndf
            and a 256-d DAMSM).
    """

    monitor = "val/mp"
    monitor_mode = "max"

    def __init__(
        self,
        generator: DENetGenerator,
        discriminator: DENetDiscriminator,
        damsm: DAMSM,
        *,
        lambda_damsm: float = 0.1,
        lambda_rec: float = 1.0,
        lambda_keep: float = 0.0,
        gp_weight: float = 2.0,
        gp_power: float = 6.0,
        lr_g: float = 1e-4,
        lr_d: float = 4e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        grid_examples: int = 8,
        fid: bool = True,
        fid_backbone: str = "inception",
        fid_pretrained: str | bool = False,
        fid_input_size: int | None = None,
        clip_model: str | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__(None)
        self.save_hyperparameters_with_networks()
        self.automatic_optimization = False
        self.damsm = damsm.eval().requires_grad_(False)
        cond = self.damsm.text_encoder.dim
        if generator.cond_dim != cond:
            raise ConfigError(f"the generator takes {generator.cond_dim}-d sentences but the DAMSM gives {cond}-d: set "
                              f"model.init_args.generator.init_args.cond_dim to {cond}")  # fmt: skip
        if discriminator.image_size != generator.image_size:
            raise ConfigError(f"the discriminator is built for {discriminator.image_size} px, the generator for "
                              f"{generator.image_size} px: give model.init_args.discriminator.init_args.image_size "
                              "the generator's")  # fmt: skip
        self.generator = generator
        self.discriminator = discriminator
        self.head = ConditionalHead(discriminator.out_channels, cond, discriminator.ndf)
        if init_from:  # networks the file lacks (a generator-only release) keep their initialisation
            load_released_denet(resolve_checkpoint_path(init_from), self.generator, self.discriminator, self.head,
                                strict=False)  # fmt: skip
        self.val_mp, self.test_mp = ManipulativePrecision(), ManipulativePrecision()
        self.val_mp_clip, self.test_mp_clip = ManipulativePrecision(), ManipulativePrecision()
        # not a submodule: CLIP's weights stay out of the checkpoints (moved to the device when first used)
        object.__setattr__(self, "clip_scorer", ClipEditScorer(clip_model) if clip_model else None)
        self.val_fid = fid_metric(fid_backbone, fid_pretrained, fid_input_size) if fid else None
        self.test_fid = fid_metric(fid_backbone, fid_pretrained, fid_input_size) if fid else None

    def setup(self, stage: str) -> None:
        check_vocabulary(self.damsm.text_encoder, self._trainer, "pre-train DAMSM on this dataset's vocabulary "
                         f"({{n}} entries) and pass that checkpoint as {DAMSM_CHECKPOINT_KEY}")  # fmt: skip

    def train(self, mode: bool = True):
        super().train(mode)
        self.damsm.eval()  # frozen: no dropout in the text encoder, fixed batch-norm statistics
        return self

    # ---- text --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, batch: dict, prefix: str = "") -> tuple[Tensor, Tensor, Tensor]:
        """Frozen DAMSM ``(words, sentence, mask)`` of ``batch[<prefix>captions]``."""
        words, sentence, mask = self.damsm.text_encoder(batch, prefix)
        return words.float(), sentence.float(), mask

    def edit(self, image: Tensor, sentence: Tensor) -> Tensor:
        return self.generator(image, sentence)

    # ---- training ----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        g = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr_g, betas=tuple(self.hparams.betas))
        d_params = list(self.discriminator.parameters()) + list(self.head.parameters())
        d = torch.optim.Adam(d_params, lr=self.hparams.lr_d, betas=tuple(self.hparams.betas))
        return [g, d]

    def discriminator_loss(self, x: Tensor, s: Tensor, t: Tensor, w: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            fake = self.generator(x, t)
        x = x.detach().requires_grad_(True)
        s = s.detach().requires_grad_(True)
        features = self.discriminator(x)
        real = self.head(features, s)
        out = {
            "adv": hinge_d_loss(real, self.head(self.discriminator(fake), t), self.head(features, w)),
            "gp": matching_aware_penalty(real, x, s, self.hparams.gp_power),
        }
        out["loss"] = discriminator_objective(out["adv"], out["gp"], self.hparams.gp_weight)
        return out

    def generator_loss(self, x: Tensor, batch: dict, s: Tensor, t_words, t: Tensor, t_mask) -> dict[str, Tensor]:
        hp = self.hparams
        fake = self.generator(x, t)
        out = {"adv": hinge_g_loss(self.head(self.discriminator(fake), t))}
        regions, image_global = self.damsm.image_encoder(fake)
        # pairs whose target captions are the same word sequence are not negatives of each other (their class)
        same_text = torch.unique(batch["target_tokens"], dim=0, return_inverse=True)[1]
        match = damsm_losses(regions, image_global, t_words, t, t_mask, same_text, *self.damsm.gammas)
        out["damsm"] = match["word"] + match["sentence"]
        out["rec"] = l1_distance(self.generator(x, s), x) if hp.lambda_rec > 0 else x.new_zeros(())
        out["keep"] = l1_distance(fake, x)
        out["loss"] = generator_objective(out["adv"], out["damsm"], out["rec"], out["keep"], hp.lambda_damsm,
                                          hp.lambda_rec, hp.lambda_keep)  # fmt: skip
        return out

    def update(self, batch: dict, opt_g, opt_d, backward, amp=contextlib.nullcontext) -> tuple[dict, dict]:
        """One discriminator then one generator update; ``backward(loss)`` runs the backward pass (Lightning's
        ``manual_backward`` in training) and the losses are computed under ``amp()`` (benchmarks pass autocast)."""
        x = batch["image"]
        with amp():
            _, s, _ = self.encode_text(batch)
            t_words, t, t_mask = self.encode_text(batch, "target_")
            _, w, _ = self.encode_text(batch, "wrong_")
            d = self.discriminator_loss(x, s, t, w)
        opt_d.zero_grad(set_to_none=True)
        backward(d["loss"])
        opt_d.step()
        with amp():
            g = self.generator_loss(x, batch, s, t_words, t, t_mask)
        opt_g.zero_grad(set_to_none=True)
        backward(g["loss"])
        opt_g.step()
        return d, g

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        d, g = self.update(batch, opt_g, opt_d, self.manual_backward)
        x = batch["image"]
        B = x.shape[0]
        self.log_dict({"train/d_loss": d["loss"], "train/g_loss": g["loss"]}, prog_bar=True, batch_size=B)
        self.log_dict({f"train/d_{k}": v for k, v in d.items() if k != "loss"}, batch_size=B)
        self.log_dict({f"train/g_{k}": v for k, v in g.items() if k != "loss"}, batch_size=B)

    # ---- evaluation --------------------------------------------------------------------------------------------
    def _evaluate(self, batch: dict, stage: str) -> Tensor:
        x = batch["image"]
        _, t, _ = self.encode_text(batch, "target_")
        edited = self.edit(x, t).float().clamp(-1, 1)
        _, image_global = self.damsm.image_encoder(edited)
        source01, edited01 = (x.float() + 1) / 2, (edited + 1) / 2
        getattr(self, f"{stage}_mp").update(source01, edited01, image_global.float(), t)
        if self.clip_scorer is not None:
            clip = self.clip_scorer.to(x.device)
            image_emb, text_emb = clip.encode_images(edited01), clip.encode_texts(batch["target_captions"])
            getattr(self, f"{stage}_mp_clip").update(source01, edited01, image_emb, text_emb)
        fid = getattr(self, f"{stage}_fid")
        if fid is not None:
            fid.update(source01, real=True)
            fid.update(edited01, real=False)
        return edited

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        edited = self._evaluate(batch, "val")
        if batch_idx == 0 and self.hparams.grid_examples and not self.trainer.sanity_checking:
            self.editing_grid(batch, edited, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        edited = self._evaluate(batch, "test")
        if batch_idx == 0 and self.hparams.grid_examples:
            self.editing_grid(batch, edited, "test")

    def _log_stage(self, stage: str) -> None:
        mp = getattr(self, f"{stage}_mp")
        values = {f"{stage}/{k}": v for k, v in mp.compute().items()}
        mp.reset()
        if self.clip_scorer is not None:  # DE-Net's names: c_sim, mp_c, rmp_c (diff and mse are the same as above)
            clip = getattr(self, f"{stage}_mp_clip")
            out = clip.compute()
            values |= {f"{stage}/c_sim": out["sim"], f"{stage}/mp_c": out["mp"], f"{stage}/rmp_c": out["rmp"]}
            clip.reset()
        fid = getattr(self, f"{stage}_fid")
        if fid is not None:
            values[f"{stage}/fid"] = fid.compute()  # features of hparams.fid_backbone
            fid.reset()
        self.log_dict(values)

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def editing_grid(self, batch: dict, edited: Tensor, stage: str) -> None:
        """Rows of source | target text | edited for the first ``grid_examples`` items (TensorBoard and PNG)."""
        n = min(self.hparams.grid_examples, edited.shape[0])
        source = (batch["image"][:n].float().cpu() + 1) / 2
        result = (edited[:n].float().cpu() + 1) / 2
        if source.shape[-1] < 64:  # toy sizes: enlarge (nearest) so that the text fits and pixels stay visible
            factor = -(-64 // source.shape[-1])
            source, result = (F.interpolate(im, scale_factor=factor, mode="nearest") for im in (source, result))
        texts = text_panel(batch["target_captions"][:n], source.shape[-1])
        rows = torch.cat([source, texts, result], dim=-1)  # [n, 3, S, 5S]
        self.log_image_grid(f"{stage}/editing", rows, nrow=1, padding=1)


@torch.no_grad()
def evaluate_toy_edits(model: DENet, datamodule, score_edits: EditScorer, split: str = "test") -> dict[str, float]:
    """Edit every ``split`` image of the toy recolour scenes towards its target caption and score the edits with
    ``score_edits(sources, edited, objects, target_captions)``: the toy's independent colour classifier
    (:func:`datamodules.toy.edit_scenes.score_edits`), passed in by the caller since a task imports no data code."""
    import json

    datamodule.setup("test" if split == "test" else "fit")
    dataset = getattr(datamodule, f"{split}_set")
    objects = json.loads((Path(datamodule.root) / "objects.json").read_text())
    model.eval()
    sources, edited, objs, targets = [], [], [], []
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    for batch in loader:
        _, t, _ = model.encode_text(batch, "target_")
        out = model.edit(batch["image"], t).float().clamp(-1, 1)
        sources.append((batch["image"].float() + 1) / 2)
        edited.append((out + 1) / 2)
        objs += [objects[dataset.entries[i]["name"]] for i in batch["index"].tolist()]
        targets += batch["target_captions"]
    return score_edits(torch.cat(sources), torch.cat(edited), objs, targets)
