"""LOUPE (Li et al., NeurIPS 2022, arXiv 2208.02515): fine-grained semantic alignment through Shapley interactions.

The total objective (the paper's overall loss; the weights are unverified and set by config)::

    L = L_CMC + alpha * L_TSA + beta * L_FSA + gamma * (L_NSE_token + L_NSE_semantic)

* ``L_CMC``: the global image-text contrastive loss of :mod:`lightning_modules.retrieval.module`.
* Token-level Shapley interaction, ``L_TSA``. The players are the image's final patch tokens (Swin: the 7 x 7 map);
  the payoff of a set ``S`` of kept patches is the image-text similarity computed from them alone::

      v(S) = cos( f(x masked to S), t )                  (token_payoff: encoder; the other patches get the mean colour)
      v(S) = cos( W mean_{i in S} x_i , t )               (token_payoff: pooled; no re-encoding, much cheaper)

  where ``f`` is the image encoder with its projection, ``x_i`` the final tokens, ``W`` the image projection and
  ``t`` the caption's global embedding (``v(N)`` is the global similarity of L_CMC). The coalitions are candidate
  regions: the patches whose centres fall in a box. The semantic region generation head proposes ``R`` boxes per
  image; each box and ``J`` jittered copies are the candidates, the one with the best score is the pseudo box the
  head regresses to with L1 + generalised IoU::

      L_TSA = mean_r ( |b_r - b*_r|_1 + L_GIoU(b_r, b*_r) ),   b*_r = argmax_{c in {b_r, jitters}} score(S_c)

  (the mean over the regions whose candidates have scores: a region the estimator's budget drops has none).

  ``score`` is the Shapley interaction ``I([S])`` of the region (``tsa_score: interaction``, the paper's term) or the
  region's Shapley value as one player beyond the even share of its area (``tsa_score: excess``)::

      excess(S) = phi([S] | N \\ S + {[S]}) - |S| / n * (v(N) - v(0))

* Semantics-level Shapley interaction, ``L_FSA``. The players are the ``R`` regions (the mean of the projected patch
  tokens in each box) and the caption's noun phrases (the mean of their projected word tokens); the payoff of a set of
  regions and phrases is their fine-grained similarity, FILIP's token-wise max-mean score over the kept players::

      v(S) = 1/2 [ mean_{i in S_I} max_{j in S_T} <h_i, p_j> + mean_{j in S_T} max_{i in S_I} <h_i, p_j> ]

  The interaction ``I([{i, j}])`` of a region and a phrase is the soft target of their alignment: per phrase, the
  distribution over regions of the alignment scores is pulled towards that of the interactions::

      L_FSA = mean_j KL( softmax_i(I_ij / tau_I) || softmax_i(s * <h_i, p_j>) )

  (both softmaxes over the regions ``i`` whose pair with phrase ``j`` has a value, the mean over the phrases with at
  least one such region: pairs the estimator's budget drops are left out).

* Uncertainty-aware neural Shapley interaction learning: one :class:`NeuralShapleyEstimator` per level predicts the
  score and its variance from features of the coalition. Where its predicted standard deviation is below a fraction of
  the spread of the sampled values (or an absolute ``max_std``) its mean replaces Monte-Carlo sampling; the rest,
  plus a random ``refresh_fraction`` that keeps it calibrated, is sampled, and the samples train it with a Gaussian
  NLL (``L_NSE``) whose variance is the predicted one plus each sample's squared standard error, so the predicted
  variance measures the estimator's own error, not the Monte-Carlo noise of its targets. With a budget, untrusted
  coalitions beyond the cap are dropped: they get no value (NaN) and L_TSA / L_FSA leave them out.

The paper's text was not available to us: the payoffs, the box head (boxes from the moments of a query's attention
over the patch grid), the jittered candidates, the excess score, the L1 + GIoU pseudo-box loss, the KL form of L_FSA
and the estimator's inputs and trust rule are our choices, recorded with measurements in docs/loupe.md. The Shapley
terms shape training only; retrieval uses the global embeddings of the dual encoder.

The pieces live beside this module and are re-exported here: box geometry and the region head in
:mod:`~lightning_modules.retrieval.loupe_regions`, payoffs and interactions in
:mod:`~lightning_modules.retrieval.loupe_payoffs`, phrase spans in :mod:`~lightning_modules.retrieval.loupe_phrases`
and the grounding figures in :mod:`~lightning_modules.retrieval.loupe_figures`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.retrieval import loupe_payoffs
from lightning_modules.retrieval.losses import (
    contrastive_loss,
    loupe_loss,
    phrase_alignment_loss,
    region_box_loss,
)
from lightning_modules.retrieval.loupe_figures import PALETTE, draw_phrase_boxes
from lightning_modules.retrieval.loupe_payoffs import fine_grained_similarity, masked_image_payoff, pooled_similarity
from lightning_modules.retrieval.loupe_phrases import phrase_char_spans, phrase_token_masks
from lightning_modules.retrieval.loupe_regions import RegionGenerator, box_to_patch_mask, jitter_boxes, patch_centres
from lightning_modules.retrieval.module import DualEncoderRetrieval
from lightning_modules.retrieval.shapley import (
    NeuralShapleyEstimator,
    all_coalitions,
    exact_pair_interactions,
    mc_coalition_value,
    mc_interaction,
)
from suite_base.errors import ConfigError

__all__ = [
    "PALETTE",
    "LoupeRetrieval",
    "RegionGenerator",
    "box_to_patch_mask",
    "draw_phrase_boxes",
    "fine_grained_similarity",
    "jitter_boxes",
    "load_loupe_run",
    "masked_image_payoff",
    "patch_centres",
    "phrase_char_spans",
    "phrase_token_masks",
    "pooled_similarity",
]


# ---- the module ------------------------------------------------------------------------------------------------------
class LoupeRetrieval(DualEncoderRetrieval):
    """LOUPE: the dual encoder of :class:`DualEncoderRetrieval` plus the token- and semantics-level Shapley terms.

    Args (besides those of :class:`DualEncoderRetrieval`):
        num_regions: regions proposed per image (``R``).
        num_candidates: jittered candidate boxes per region for L_TSA (``J``).
        jitter_scale: how far candidates move / rescale (fraction of the box size).
        max_phrases: noun phrases used per caption.
        noun_chunker: ``rules`` or ``spacy``.
        shapley_batch: pairs of each batch the Shapley terms use (``None``: all); L_CMC always uses the whole batch.
        token_payoff: ``encoder`` (re-encode the image with the other patches masked; the paper's "similarity of a
            masked token set") or ``pooled`` (mean-pool the kept final tokens; no re-encoding, much cheaper).
        tsa_score: what ranks the candidate boxes: ``interaction`` (``I([S])``, the paper's term) or ``excess`` (the
            region's Shapley value as one player beyond its area's even share, ``phi([S]) - |S|/n (v(N) - v(0))``;
            docs/loupe.md shows when each finds objects).
        payoff_chunk: images per encoder call when re-encoding.
        shapley_samples: Monte-Carlo orders per interaction.
        member_samples: members of a region evaluated per sample (``None``: all; see :func:`mc_interaction`).
        tsa_weight, fsa_weight, estimator_weight: ``alpha``, ``beta``, ``gamma`` of the total loss.
        fsa_temperature: ``tau_I`` of the interaction targets.
        use_estimator: the neural estimator replaces sampling where it is confident (else always sample).
        estimator_hidden: the estimators' width.
        estimator_max_std: trust a prediction whose standard deviation is below this (``None``: the relative rule).
        estimator_trust_ratio: the relative rule: trust a prediction whose standard deviation is below this times
            the running spread of the sampled values (its error small next to the differences the losses use).
        semantic_exact_players: the semantics-level game is computed exactly, from the payoffs of all ``2**(R + P)``
            coalitions, when it has at most this many players (regions + phrases); it is then cheaper than sampling
            and noise-free, and the semantics-level estimator is not built. 0: always sample (and estimate).
        estimator_budget: once warm, sample at most this share of the coalitions, the least confident first
            (``None``: the trust rule alone decides). It only caps the sampling: untrusted coalitions beyond the cap
            are dropped from L_TSA / L_FSA, never replaced by their estimate (see
            :meth:`NeuralShapleyEstimator.split`; logged as ``train/dropped_token`` / ``train/dropped_semantic``).
        estimator_warmup: sampled batches before the budget applies.
        estimator_replay: samples each estimator remembers and refits on (0: only the current step's).
        refresh_fraction: share of trusted coalitions sampled anyway (keeps the estimators calibrated).
        estimator_lr_scale: the estimators' learning rate relative to the model's (they must track the games of a
            changing model from few samples per step).
        pictures: validation images drawn with their phrases' regions (0: none).
        shapley_seed: seed of the Shapley terms' own random generator (jitter, orders, refresh draws), so that they
            leave the global RNG, and with it the data order and augmentation, exactly as the ITC-only baseline has
            them: LOUPE and ITC runs with the same seed see the same batches.
        init_from: a LOUPE run's checkpoint to start from (the pre-training of ``pretrain_webdataset.yaml``; a glob
            takes the newest match): every tensor whose name and shape match; the image and text towers must be there.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        *,
        num_regions: int = 8,
        num_candidates: int = 4,
        jitter_scale: float = 0.3,
        max_phrases: int = 6,
        noun_chunker: str = "rules",
        shapley_batch: int | None = None,
        token_payoff: str = "encoder",
        tsa_score: str = "interaction",
        payoff_chunk: int = 512,
        shapley_samples: int = 8,
        member_samples: int | None = 2,
        tsa_weight: float = 1.0,
        fsa_weight: float = 1.0,
        estimator_weight: float = 1.0,
        fsa_temperature: float = 0.02,
        use_estimator: bool = True,
        estimator_hidden: int = 256,
        estimator_max_std: float | None = None,
        estimator_trust_ratio: float = 0.25,
        semantic_exact_players: int = 12,
        estimator_budget: float | None = None,
        estimator_warmup: int = 50,
        estimator_replay: int = 0,
        refresh_fraction: float = 0.1,
        estimator_lr_scale: float = 10.0,
        pictures: int = 6,
        shapley_seed: int = 0,
        init_from: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(image_encoder=image_encoder, text_encoder=text_encoder, **kwargs)
        self.save_hyperparameters_with_networks()
        if token_payoff not in ("encoder", "pooled"):
            raise ConfigError(f"token_payoff must be 'encoder' or 'pooled', got {token_payoff!r}")
        if tsa_score not in ("interaction", "excess"):
            raise ConfigError(f"tsa_score must be 'interaction' or 'excess', got {tsa_score!r}")
        pool = getattr(self.image_encoder, "global_pool", "avg")
        if pool not in ("avg", ""):
            raise ConfigError(
                f"LOUPE's token-level payoff mean-pools patch tokens, so the image encoder must pool the same way: "
                f"got global_pool={pool!r}; set model.init_args.image_encoder.init_args.kwargs.global_pool: avg"
            )
        width, dim = self.image_encoder.num_features, self.image_proj.out_features
        self.region_generator = RegionGenerator(width, num_regions)
        trust = dict(max_std=estimator_max_std, trust_ratio=estimator_trust_ratio, budget=estimator_budget,
                     warmup=estimator_warmup, replay=estimator_replay)  # fmt: skip
        local = self.image_encoder.patch_embed.proj.out_channels  # width of the local (patch-embedding) features
        self.token_estimator = NeuralShapleyEstimator(local + 3 * dim + 5, estimator_hidden, **trust)
        self.semantic_exact = num_regions + max_phrases <= semantic_exact_players
        self.semantic_estimator = (
            None if self.semantic_exact else NeuralShapleyEstimator(3 * dim + 3, estimator_hidden, **trust)
        )
        self._generators: dict[str, torch.Generator] = {}
        self.num_regions, self.num_candidates, self.jitter_scale = num_regions, num_candidates, jitter_scale
        self.max_phrases, self.noun_chunker, self.shapley_batch = max_phrases, noun_chunker, shapley_batch
        self.token_payoff, self.tsa_score, self.payoff_chunk = token_payoff, tsa_score, payoff_chunk
        self.shapley_samples, self.member_samples = shapley_samples, member_samples
        self.tsa_weight, self.fsa_weight, self.estimator_weight = tsa_weight, fsa_weight, estimator_weight
        self.fsa_temperature, self.use_estimator = fsa_temperature, use_estimator
        self.refresh_fraction = refresh_fraction
        self.estimator_lr_scale, self.pictures, self.shapley_seed = estimator_lr_scale, pictures, shapley_seed
        if init_from:
            load_loupe_run(self, init_from)

    def generator(self, device: torch.device) -> torch.Generator:
        """The Shapley terms' random generator on ``device`` (seeded with ``shapley_seed`` plus the global rank)."""
        key = str(device)
        if key not in self._generators:
            rank = self.global_rank if self._trainer is not None else 0
            self._generators[key] = torch.Generator(device=device).manual_seed(self.shapley_seed + rank)
        return self._generators[key]

    def lr_scales(self) -> dict[str, float]:
        """The estimators learn at ``estimator_lr_scale`` times the model's learning rate."""
        names = ("token_estimator", "semantic_estimator")
        return {name: self.estimator_lr_scale for name in names if getattr(self, name) is not None}

    # ---- tokens ----------------------------------------------------------------------------------------------------
    def patch_grid(self, tokens: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The final patch tokens ``[B, n, C]`` (prefix tokens dropped, NHWC maps flattened) and their grid."""
        if tokens.ndim == 4:  # Swin and other NHWC encoders
            B, h, w, C = tokens.shape
            return tokens.reshape(B, h * w, C), (h, w)
        prefix = getattr(self.image_encoder, "num_prefix_tokens", 0)
        grid = tuple(self.image_encoder.patch_embed.grid_size)
        return tokens[:, prefix:], grid

    def regions(self, tokens: Tensor) -> dict:
        """Boxes ``[B, R, 4]``, their patch masks ``[B, R, n]``, the projected patch tokens ``[B, n, D]`` and the
        region embeddings ``[B, R, D]`` (unit norm) of encoder ``tokens``."""
        patches, grid = self.patch_grid(tokens)
        projected = self.image_proj(patches)
        boxes = self.region_generator(patches.detach(), grid)
        masks = box_to_patch_mask(boxes.detach(), grid)
        m = masks.to(projected.dtype)
        pooled = torch.bmm(m, projected) / m.sum(-1, keepdim=True).clamp(min=1)
        return {"boxes": boxes, "masks": masks, "projected": projected, "grid": grid,
                "embeds": F.normalize(pooled, dim=-1)}  # fmt: skip

    @torch.no_grad()
    def local_features(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, n, C0]``: the patch embedding (before any attention mixes the patches) average-pooled onto the final
        token grid; what a region holds locally, an input of the token-level estimator."""
        emb = self.image_encoder.patch_embed(images)
        if emb.ndim == 4:  # NHWC (Swin)
            emb = emb.permute(0, 3, 1, 2)
        else:  # NLC (ViT)
            h, w = self.image_encoder.patch_embed.grid_size
            emb = emb.transpose(1, 2).reshape(emb.shape[0], -1, h, w)
        return F.adaptive_avg_pool2d(emb, grid).flatten(2).transpose(1, 2)

    def phrases(self, captions: list[str], words: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, list[list[str]]]:
        """Phrase embeddings ``[B, P, D]`` (unit norm), valid mask ``[B, P]`` and texts."""
        masks, texts = phrase_token_masks(captions, offsets, self.max_phrases, self.noun_chunker)
        m = masks.to(words.dtype)
        pooled = torch.bmm(m, words) / m.sum(-1, keepdim=True).clamp(min=1)
        return F.normalize(self.text_proj(pooled), dim=-1), masks.any(-1), texts

    # ---- L_TSA -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encoder_payoff(self, images: Tensor, text: Tensor, grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
        """:func:`masked_image_payoff` with this model's image encoder, run in eval mode (no drop-path noise)."""

        def encode(x: Tensor) -> Tensor:
            was_training = self.image_encoder.training
            self.image_encoder.eval()
            try:
                return self.encode_images(x)[0]
            finally:
                self.image_encoder.train(was_training)

        return masked_image_payoff(encode, images, text, grid, self.payoff_chunk)

    def token_interactions(
        self, reg: dict, text: Tensor, candidates: Tensor, images: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Token-level scores ``[B, R, C]`` of candidate boxes ``[B, R, C, 4]`` for the caption ``text``: the
        interaction ``I([S])`` (``tsa_score: interaction``) or the region's excess value
        ``phi([S]) - |S|/n (v(N) - v(0))`` (``tsa_score: excess``), with the payoff ``token_payoff`` (``encoder``
        needs ``images``). A region's scores are NaN where the estimator's budget dropped it."""
        B, R, C, _ = candidates.shape
        n = reg["projected"].shape[1]
        tokens, text = reg["projected"].detach(), text.detach()
        masks = box_to_patch_mask(candidates, reg["grid"]).reshape(B, R * C, n)
        owner = torch.arange(B, device=text.device).repeat_interleave(R * C)
        flat_masks = masks.reshape(-1, n)
        m = masks.to(tokens.dtype)
        pooled = F.normalize(torch.bmm(m, tokens), dim=-1).reshape(-1, tokens.shape[-1])
        width = self.image_encoder.patch_embed.proj.out_channels
        if images is not None:
            local = torch.bmm(m, self.local_features(images, reg["grid"])) / m.sum(-1, keepdim=True).clamp(min=1)
        else:
            local = tokens.new_zeros(B, R * C, width)
        features = torch.cat(
            [local.reshape(-1, width), pooled, text[owner], pooled * text[owner], candidates.reshape(-1, 4),
             flat_masks.to(tokens.dtype).mean(-1, keepdim=True)], -1,
        )  # fmt: skip

        def payoff(rows: Tensor) -> Callable[[Tensor], Tensor]:
            if self.token_payoff == "encoder":
                return self.encoder_payoff(images[rows], text[rows], reg["grid"])
            return lambda masks_: pooled_similarity(masks_, tokens[rows], text[rows])

        def sample(index: Tensor) -> Tensor:
            game = payoff(owner[index])
            if self.tsa_score == "excess":
                coalitions = flat_masks[index]
                value, stderr = mc_coalition_value(game, coalitions, self.shapley_samples, self.generator(text.device))
                # v(N) - v(0) once per image (not per coalition)
                rows, where = owner[index].unique(return_inverse=True)  # only the images sampled from
                full = torch.ones(rows.numel(), 1, n, dtype=torch.bool, device=text.device)
                ends = payoff(rows)(torch.cat([full, ~full], 1)).float()  # [rows, 2]
                share = coalitions.float().mean(-1) * (ends[:, 0] - ends[:, 1])[where]
                return value - share, stderr
            gen = self.generator(text.device)
            return mc_interaction(
                game, flat_masks[index], self.shapley_samples, gen, member_samples=self.member_samples
            )

        estimator = self.token_estimator if self.use_estimator else None
        gen = self.generator(features.device)
        # a region's candidates are compared with each other: sampled or estimated together
        values, nll, share = loupe_payoffs.estimate_interactions(
            features, sample, estimator, self.refresh_fraction, gen, C
        )
        return values.reshape(B, R, C), nll, share

    def tsa_loss(self, reg: dict, text: Tensor, images: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(L_TSA, estimator NLL, sampled share, scores [B, R, 1 + J])``: each box and ``num_candidates`` jittered
        copies scored by :meth:`token_interactions`, the loss by :func:`~lightning_modules.retrieval.losses.
        region_box_loss` (a region the estimator's budget dropped, NaN scores, adds nothing)."""
        boxes = reg["boxes"].detach()
        min_size = 1 / max(reg["grid"])
        jittered = jitter_boxes(boxes, self.num_candidates, self.jitter_scale, min_size, self.generator(boxes.device))
        candidates = torch.cat([boxes.unsqueeze(2), jittered], dim=2)
        scores, nll, share = self.token_interactions(reg, text, candidates, images)
        return region_box_loss(reg["boxes"], candidates, scores), nll, share, scores

    # ---- L_FSA -----------------------------------------------------------------------------------------------------
    def semantic_interactions(
        self, regions: Tensor, phrases: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Region-phrase interactions ``[B, R, P]`` (0 for padded phrases), the estimator NLL, sampled share, and the
        valid-pair mask. Interactions are NaN for the pairs the estimator's budget dropped."""
        B, R, _ = regions.shape
        P = phrases.shape[1]
        scores = (regions @ phrases.transpose(1, 2)).detach()  # [B, R, P]
        pairs = valid.unsqueeze(1).expand(B, R, P)
        b, i, j = pairs.nonzero(as_tuple=True)
        out = scores.new_zeros(B, R, P)
        if b.numel() == 0:
            return out, scores.new_zeros(()), scores.new_zeros(()), pairs
        # padded phrases are null players: keep them out of every coalition
        allowed = torch.cat([torch.ones(B, R, dtype=torch.bool, device=valid.device), valid], 1)
        if self.semantic_exact:  # v of every coalition once per image, then every pair's interaction exactly
            coalitions = all_coalitions(R + P, scores.device).unsqueeze(0) & allowed.unsqueeze(1)  # [B, 2**n, n]
            payoffs = fine_grained_similarity(coalitions, scores)  # [B, 2**n]
            pair = torch.stack([i, R + j], -1).unsqueeze(1)  # [K, 1, 2]
            out[b, i, j] = exact_pair_interactions(payoffs[b], pair).squeeze(1).to(out.dtype)
            return out, scores.new_zeros(()), scores.new_zeros(()), pairs
        players = torch.zeros(b.numel(), R + P, dtype=torch.bool, device=scores.device)
        players[torch.arange(b.numel()), i] = True
        players[torch.arange(b.numel()), R + j] = True
        low = torch.finfo(scores.dtype).min
        masked = scores.masked_fill(~valid.unsqueeze(1), low)
        s = scores[b, i, j]
        features = torch.cat(
            [regions[b, i].detach(), phrases[b, j].detach(), (regions[b, i] * phrases[b, j]).detach(),
             torch.stack([s, s - masked[b, :, j].amax(-1), s - masked[b, i].amax(-1)], -1)], -1,
        )  # fmt: skip

        def sample(index: Tensor) -> Tensor:
            who = b[index]
            keep = allowed[who]

            def game(masks_: Tensor) -> Tensor:
                shape = masks_.shape
                flat = masks_.reshape(shape[0], -1, R + P) & keep.unsqueeze(1)
                return fine_grained_similarity(flat, scores[who]).reshape(shape[:-1])

            return mc_interaction(game, players[index], self.shapley_samples, self.generator(scores.device))

        estimator = self.semantic_estimator if self.use_estimator else None
        gen = self.generator(features.device)
        refresh = self.refresh_fraction
        values, nll, share = loupe_payoffs.estimate_interactions(features, sample, estimator, refresh, gen)
        out[b, i, j] = values.to(out.dtype)
        return out, nll, share, pairs

    def fsa_loss(self, regions: Tensor, phrases: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(L_FSA, estimator NLL, sampled share)``: the region-phrase interactions of :meth:`semantic_interactions`
        as the targets of :func:`~lightning_modules.retrieval.losses.phrase_alignment_loss` (pairs the estimator's
        budget dropped, NaN, are left out)."""
        inter, nll, share, _ = self.semantic_interactions(regions, phrases, valid)
        loss = phrase_alignment_loss(regions, phrases, inter, valid, self.scale(), self.fsa_temperature)
        return loss, nll, share

    # ---- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        image_emb, tokens = self.encode_images(batch["image"])
        text_emb, words, _, offsets = self.encode_texts(batch["captions"], offsets=True)
        cmc = contrastive_loss(image_emb, text_emb, batch["image_ids"], self.scale(), self.momentum_keys(batch))
        k = self.shapley_batch or tokens.shape[0]  # the Shapley terms use the first k pairs
        reg = self.regions(tokens[:k])
        tsa, nll_t, share_t, _ = self.tsa_loss(reg, text_emb[:k], batch["image"][:k])
        phrases, valid, _ = self.phrases(batch["captions"][:k], words[:k], offsets[:k])
        fsa, nll_s, share_s = self.fsa_loss(reg["embeds"], phrases, valid)
        loss = loupe_loss(cmc, tsa, fsa, nll_t + nll_s, self.tsa_weight, self.fsa_weight, self.estimator_weight)
        B = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        logs = {"cmc": cmc, "tsa": tsa, "fsa": fsa, "nse_token": nll_t, "nse_semantic": nll_s,
                "sampled_token": share_t, "sampled_semantic": share_s, "temperature": 1 / self.scale(),
                "phrases_per_caption": valid.float().sum(1).mean()}  # fmt: skip
        if self.use_estimator:  # the typical predicted uncertainty and the trust threshold it is compared with
            for name, est in (("token", self.token_estimator), ("semantic", self.semantic_estimator)):
                if est is None:
                    continue
                logs[f"estimator_std_{name}"], logs[f"trust_below_{name}"] = est.last_std, est.threshold()
                logs[f"sampling_stderr_{name}"] = est.noise_std
                logs[f"dropped_{name}"] = est.last_dropped  # untrusted beyond the budget: left out of the losses
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=B)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if batch_idx == 0 and self.pictures and self._trainer is not None and not self.trainer.sanity_checking:
            self.draw_grounding(batch)

    @torch.no_grad()
    def ground(self, images: Tensor, captions: list[str]) -> tuple[Tensor, Tensor, list[list[str]]]:
        """Phrase grounding: for each caption's noun phrases, the box ``[B, P, 4]`` of the region it aligns to
        best, the alignment score ``[B, P]`` and the phrase texts."""
        _, tokens = self.encode_images(images)
        _, words, _, offsets = self.encode_texts(captions, offsets=True)
        reg = self.regions(tokens)
        phrases, valid, texts = self.phrases(captions, words, offsets)
        scores = reg["embeds"] @ phrases.transpose(1, 2)  # [B, R, P]
        best = scores.argmax(1)  # [B, P]
        boxes = torch.gather(reg["boxes"], 1, best.unsqueeze(-1).expand(-1, -1, 4))
        return boxes, scores.amax(1), texts

    def draw_grounding(self, batch: dict) -> None:
        """Log (TensorBoard) and save (``<run>/pictures/``) a few validation images with each noun phrase of their
        first caption drawn as the box of the region it aligns to."""
        count = min(self.pictures, batch["image"].shape[0])
        firsts = [int((batch["text_image_ids"] == i).nonzero()[0]) for i in batch["image_ids"][:count].tolist()]
        captions = [batch["captions"][k] for k in firsts]
        boxes, _, texts = self.ground(batch["image"][:count], captions)
        dm = self.trainer.datamodule
        mean = torch.tensor(getattr(dm, "mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1).to(batch["image"])
        std = torch.tensor(getattr(dm, "std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1).to(batch["image"])
        images = (batch["image"][:count] * std + mean).clamp(0, 1)
        panels = draw_phrase_boxes(images.cpu(), boxes.cpu(), texts, captions)
        self.log_image_grid("val/grounding", panels, nrow=min(count, 3))


def load_loupe_run(module: nn.Module, path: str) -> None:
    """Start ``module`` from a LOUPE run's Lightning checkpoint: load every tensor whose name and shape match (an
    estimator the other run did not build keeps its initialisation); a checkpoint without the image and text towers
    (another model, or not a run of this suite) is a :class:`ConfigError` naming the file."""
    from lightning_modules.backbones import read_torch_checkpoint

    file, state = read_torch_checkpoint(path)
    weights = state.get("state_dict", state) if isinstance(state, dict) else {}
    target = module.state_dict()
    matched = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    towers = [k for k in target if k.startswith(("image_encoder.", "text_encoder."))]
    absent = [k for k in towers if k not in matched]
    if absent:
        raise ConfigError(f"init_from {file}: {len(absent)} tower tensors missing or of other shapes (e.g. "
                          f"{absent[:3]}); give a checkpoint of a LOUPE run with the same encoders")  # fmt: skip
    module.load_state_dict(matched, strict=False)
