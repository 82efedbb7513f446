"""Image-text retrieval metrics: Recall@K in both directions and RSUM, as a DDP-safe torchmetrics ``Metric``.

The protocol is the standard one of the image-text retrieval literature (VSE++, Faghri et al. 2018; CLIP's zero-shot
retrieval evaluation, Radford et al. 2021), on the Karpathy & Fei-Fei 2015 test splits (COCO 5K / 1K, Flickr30K 1K)
with five captions per image, and it is the protocol whose numbers LOUPE (Li et al. 2022, arXiv 2208.02515) reports
as R@1 / R@5 / R@10 for image-to-text and text-to-image retrieval and their sum, RSUM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

_STATES = ("image_embeds", "image_ids", "text_embeds", "text_image_ids", "text_ids")
_MAX_LISTED_IDS = 20


def _listed(ids: Tensor) -> str:
    """Format (at most ``_MAX_LISTED_IDS`` of) the sorted unique ``ids`` for an error message."""
    unique = torch.unique(ids).tolist()
    shown = ", ".join(str(i) for i in unique[:_MAX_LISTED_IDS])
    more = f" ... ({len(unique)} in all)" if len(unique) > _MAX_LISTED_IDS else ""
    return f"[{shown}{more}]"


def _first_index(inverse: Tensor, num_groups: int) -> Tensor:
    """Index of the first row of every group ``[num_groups]``, for the ``inverse`` of ``torch.unique``."""
    positions = torch.arange(inverse.numel(), device=inverse.device)
    first = torch.full((num_groups,), inverse.numel(), dtype=torch.long, device=inverse.device)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin", include_self=True)


class ImageTextRetrieval(Metric):
    """Recall@K of image-to-text (I2T) and text-to-image (T2I) retrieval on the full similarity matrix, and RSUM.

    Every image and caption of the evaluation set is gathered (list states reduced by concatenation, so under DDP
    every rank sees the whole set), the embeddings are l2-normalised and ``S = images @ texts^T`` is the cosine
    similarity matrix (COCO 5K: 5000 x 25010). Ranks are 0-based:

    * I2T (one query per image): the rank of image ``i`` is the number of captions that are *not* among its ground
      truth and score higher than its best-scoring ground-truth caption; a hit at K when ``rank < K``.
    * T2I (one query per caption): the rank of caption ``t`` is the number of images other than its own that score
      higher than its own image.

    ``R@K`` is 100 x the fraction of queries hit at K (percent, as the papers print it) and ``rsum`` is the sum of all
    ``R@K`` of both directions (600 at most with the default ``ks``). Any number of captions per image is allowed.

    Ties: with ``ties="optimistic"`` (the usual ``argsort`` behaviour of reference implementations when the ground
    truth comes first) a competitor must score strictly higher to push the ground truth down; with
    ``ties="pessimistic"`` an equal score also counts against the ground truth. With float embeddings of trained
    models exact ties are rare; the two settings bound what any tie-breaking order could report.

    Deduplication: a ``DistributedSampler`` pads the last batches by repeating samples, so the same image or caption
    can arrive twice. Images are kept once per ``image_ids`` value (the first copy gathered). Captions are kept once
    per ``text_ids`` value (global caption ids, e.g. Karpathy ``sentid``) when given; without ``text_ids`` every
    caption counts (identical strings may be distinct captions), so pass them in distributed evaluation.
    ``text_ids`` must be given in every update or in none.

    Call :meth:`update` per batch and :meth:`compute` at the end of the epoch; ``forward`` (a per-batch value) is
    not meaningful for a retrieval metric, whose batches need not hold the images of their captions.

    Args:
        ks: the K of the reported ``R@K`` (distinct positive integers), keys ``i2t_r{K}`` and ``t2i_r{K}``.
        ties: ``"optimistic"`` or ``"pessimistic"`` treatment of equal scores (see above).
        kwargs: passed to :class:`torchmetrics.Metric` (``compute_on_cpu``, ``process_group``, ...).

    Attributes:
        chunk_size: images (I2T) or captions (T2I) scored per matrix product in :meth:`compute`; bounds the memory
            to ``chunk_size x number of candidates`` scores.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    chunk_size = 1024

    image_embeds: list[Tensor] | Tensor
    image_ids: list[Tensor] | Tensor
    text_embeds: list[Tensor] | Tensor
    text_image_ids: list[Tensor] | Tensor
    text_ids: list[Tensor] | Tensor

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        ties: Literal["optimistic", "pessimistic"] = "optimistic",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        ks = tuple(int(k) for k in ks)
        if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
            raise ValueError(f"ks must be distinct positive integers, got {ks}")
        if ties not in ("optimistic", "pessimistic"):
            raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
        self.ks = ks
        self.ties = ties
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_embeds: Tensor,
        image_ids: Tensor,
        text_embeds: Tensor,
        text_image_ids: Tensor,
        text_ids: Tensor | None = None,
    ) -> None:
        """Store a batch of image and caption embeddings with their global ids.

        Args:
            image_embeds: ``[Bi, D]`` image embeddings (any scale; normalised in :meth:`compute`).
            image_ids: ``[Bi]`` global dataset ids of the images.
            text_embeds: ``[Bt, D]`` caption embeddings.
            text_image_ids: ``[Bt]`` for every caption, the id of its image (which may arrive in another batch).
            text_ids: optional ``[Bt]`` non-negative global caption ids, used to deduplicate captions.
        """
        if image_embeds.ndim != 2 or text_embeds.ndim != 2:
            shapes = f"images {tuple(image_embeds.shape)} and texts {tuple(text_embeds.shape)}"
            raise ValueError(f"embeddings must be [B, D], got {shapes}")
        if image_embeds.shape[1] != text_embeds.shape[1]:
            widths = f"{image_embeds.shape[1]} vs {text_embeds.shape[1]}"
            raise ValueError(f"image and text embeddings differ in width: {widths}")
        for name, ids, rows in (
            ("image_ids", image_ids, image_embeds.shape[0]),
            ("text_image_ids", text_image_ids, text_embeds.shape[0]),
            ("text_ids", text_ids, text_embeds.shape[0]),
        ):
            if ids is None:
                continue
            if ids.ndim != 1 or ids.shape[0] != rows:
                raise ValueError(f"{name} must be [{rows}], got {tuple(ids.shape)}")
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer ids, got {ids.dtype}")
        if text_ids is None:
            text_ids = torch.full((text_embeds.shape[0],), -1, dtype=torch.long, device=self.device)
        elif bool((text_ids < 0).any()):
            raise ValueError(f"text_ids must be non-negative, got {_listed(text_ids[text_ids < 0])}")
        self.image_embeds.append(image_embeds.detach().to(device=self.device, dtype=torch.float32))
        self.image_ids.append(image_ids.detach().to(device=self.device, dtype=torch.long))
        self.text_embeds.append(text_embeds.detach().to(device=self.device, dtype=torch.float32))
        self.text_image_ids.append(text_image_ids.detach().to(device=self.device, dtype=torch.long))
        self.text_ids.append(text_ids.detach().to(device=self.device, dtype=torch.long))

    def compute(self) -> dict[str, Tensor]:
        """Recall@K (percent) of both directions and RSUM over everything gathered.

        Returns:
            ``{"i2t_r{K}": ..., "t2i_r{K}": ..., "rsum": ...}`` as float32 scalars, K in the order of ``ks``.

        Raises:
            ValueError: when nothing was gathered, a caption's image id has no image, an image has no caption, or
                ``text_ids`` were given in some updates only or map one caption id to two images.
        """
        if isinstance(self.image_embeds, list) and not self.image_embeds:
            raise ValueError("ImageTextRetrieval.compute called before any update")
        image_embeds, image_ids = dim_zero_cat(self.image_embeds), dim_zero_cat(self.image_ids)
        text_embeds, text_image_ids = dim_zero_cat(self.text_embeds), dim_zero_cat(self.text_image_ids)
        text_ids = dim_zero_cat(self.text_ids)
        if image_ids.numel() == 0 or text_image_ids.numel() == 0:
            counts = f"{image_ids.numel()} images and {text_image_ids.numel()} captions"
            raise ValueError(f"retrieval needs images and captions, got {counts}")

        # One image per id (the first copy gathered); after this image_ids is sorted and unique (torch.unique).
        image_ids, inverse = torch.unique(image_ids, return_inverse=True)
        image_embeds = image_embeds[_first_index(inverse, image_ids.numel())]
        keep_texts = self._unique_texts(text_embeds, text_image_ids, text_ids)
        text_embeds, text_image_ids = text_embeds[keep_texts], text_image_ids[keep_texts]

        # Row of every caption's ground-truth image.
        text_gt = torch.searchsorted(image_ids, text_image_ids).clamp_(max=image_ids.numel() - 1)
        found = image_ids[text_gt] == text_image_ids
        if not bool(found.all()):
            missing = _listed(text_image_ids[~found])
            raise ValueError(f"captions refer to image ids with no image in the gathered set: {missing}")
        captions_per_image = torch.bincount(text_gt, minlength=image_ids.numel())
        if bool((captions_per_image == 0).any()):
            uncaptioned = _listed(image_ids[captions_per_image == 0])
            raise ValueError(f"images with no caption in the gathered set: {uncaptioned}")

        images = F.normalize(image_embeds, dim=1)
        texts = F.normalize(text_embeds, dim=1)
        i2t_ranks = self._image_to_text_ranks(images, texts, text_gt)
        t2i_ranks = self._text_to_image_ranks(images, texts, text_gt)

        result = {f"i2t_r{k}": 100.0 * (i2t_ranks < k).float().mean() for k in self.ks}
        result.update({f"t2i_r{k}": 100.0 * (t2i_ranks < k).float().mean() for k in self.ks})
        result["rsum"] = torch.stack(list(result.values())).sum()
        return result

    @staticmethod
    def _unique_texts(text_embeds: Tensor, text_image_ids: Tensor, text_ids: Tensor) -> Tensor:
        """Indices of the captions to keep: one per caption id; every caption when no ids were given (pass
        ``text_ids`` under DDP, whose sampler pads with repeated samples)."""
        given = text_ids >= 0
        if bool(given.any()) and not bool(given.all()):
            raise ValueError("text_ids must be passed to every ImageTextRetrieval.update or to none")
        if bool(given.all()):
            unique, inverse = torch.unique(text_ids, return_inverse=True)
            keep = _first_index(inverse, unique.numel())
            conflict = text_image_ids != text_image_ids[keep[inverse]]
            if bool(conflict.any()):
                raise ValueError(f"caption ids given with two different image ids: {_listed(text_ids[conflict])}")
            return keep
        return torch.arange(text_ids.numel(), device=text_ids.device)

    def _beats(self, scores: Tensor, reference: Tensor) -> Tensor:
        """Where a competitor's score pushes the ground truth down: ``>`` (optimistic ties) or ``>=`` (pessimistic)."""
        return scores > reference if self.ties == "optimistic" else scores >= reference

    def _image_to_text_ranks(self, images: Tensor, texts: Tensor, text_gt: Tensor) -> Tensor:
        """0-based rank of every image's best ground-truth caption among all captions, ``[num_images]``."""
        ranks = torch.empty(images.shape[0], dtype=torch.long, device=images.device)
        for start in range(0, images.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, images.shape[0])
            scores = images[start:stop] @ texts.T
            is_gt = text_gt[None, :] == torch.arange(start, stop, device=images.device)[:, None]
            best_gt = scores.masked_fill(~is_gt, float("-inf")).amax(dim=1, keepdim=True)
            ranks[start:stop] = (self._beats(scores, best_gt) & ~is_gt).sum(dim=1)
        return ranks

    def _text_to_image_ranks(self, images: Tensor, texts: Tensor, text_gt: Tensor) -> Tensor:
        """0-based rank of every caption's ground-truth image among all images, ``[num_texts]``."""
        ranks = torch.empty(texts.shape[0], dtype=torch.long, device=texts.device)
        for start in range(0, texts.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, texts.shape[0])
            scores = texts[start:stop] @ images.T
            gt = text_gt[start:stop, None]
            beats = self._beats(scores, scores.gather(1, gt)).scatter_(1, gt, False)
            ranks[start:stop] = beats.sum(dim=1)
        return ranks
