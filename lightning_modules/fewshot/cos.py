"""COS, COSOC's clustering-based object seeker (official ``COS.py``), run as ``python -m experiments predict``.

For every training image the backbone (the Exemplar stage's) embeds the whole image and 30 RandomResizedCrops
(:class:`datamodules.episodes.COSViews`, features batched on the device). Then, per class (:func:`seek_objects`):

1. K-means with K = 5 (scikit-learn, ``random_state`` 0, 10 initialisations as the official sklearn default) over
   all ``31 x N`` view features of the class;
2. keep the clusters whose *coverage*, the fraction of the class's images with at least one view in the cluster,
   is above 0.5 (none: the best-covering one); these are the objects the class's images share;
3. per image, each view's distance ``d`` to its nearest kept centroid; keep the 3 closest views;
4. score ``s = 1 - d / D`` with ``D`` the largest distance of any view to its nearest centroid over the whole dataset
   (official ``max_distance``), and sampling probabilities ``p_k = max(s) * s_k / sum(s)`` (clipped at 0).

The result, written atomically to ``output``, is what fusion sampling reads (``data.cos_file``): ``paths`` (relative
to the dataset root), ``boxes [N, 3, 4]`` (top, left, height, width in pixels; ``-1`` = the whole image), ``probs
[N, 3]`` and ``distances [N, 3]``. A picture of the kept crops on a few images is saved in the run
(``pictures/predict_cos_crops.png``) and logged to TensorBoard.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.cluster import KMeans
from torch import Tensor, nn

from lightning_modules.base import SuiteModule, save_picture
from lightning_modules.fewshot.heads import pooled_features
from suite_base.cos import relative_key
from suite_base.errors import ConfigError
from suite_base.io import atomic_write_bytes

PRETRAINED_KEY = "model.init_args.backbone.init_args.pretrained"  # where configs name the starting weights


def seek_objects(features: Tensor, labels: Tensor, n_clusters: int = 5, threshold: float = 0.5, top_k: int = 3,
                 seed: int = 0) -> dict[str, Tensor]:  # fmt: skip
    """COS on ``features [N, V, D]`` of ``N`` images with ``labels [N]``: ``{"views" [N, top_k] (indices into the V
    views, closest first), "distances", "probs" [N, top_k], "coverage" {class: [K]}, "scale" D}`` (module docstring)."""
    n, v, _ = features.shape
    if top_k > v:
        raise ConfigError(f"COS keeps top_k={top_k} views but each image has only {v}")
    views = torch.zeros(n, top_k, dtype=torch.long)
    dists = torch.zeros(n, top_k)
    coverage, nearest_any = {}, []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        x = features[rows].reshape(-1, features.shape[-1]).double().numpy()
        k = min(n_clusters, x.shape[0])
        kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(x)
        assign = torch.from_numpy(kmeans.labels_).view(len(rows), v)
        cover = torch.stack([(assign == j).any(1).double().mean() for j in range(k)])
        kept = (cover > threshold).nonzero().flatten()
        if kept.numel() == 0:
            kept = cover.argmax().view(1)
        dist = torch.from_numpy(kmeans.transform(x)).view(len(rows), v, k)
        nearest_any.append(dist.min(-1).values.max())
        d, idx = dist[..., kept].min(-1).values.topk(top_k, dim=1, largest=False)
        views[rows], dists[rows] = idx, d.float()
        coverage[int(c)] = cover
    scale = torch.stack(nearest_any).max().float()
    s = (1 - dists / scale).clamp_min(0)
    probs = s.max(1, keepdim=True).values * s / s.sum(1, keepdim=True).clamp_min(1e-12)
    return {"views": views, "distances": dists, "probs": probs, "coverage": coverage, "scale": scale}


def draw_crops(path: str, boxes: Tensor, probs: Tensor, size: int = 128) -> Image.Image:
    """The image at ``path`` with its kept COS boxes outlined (width grows with the sampling probability)."""
    with Image.open(path) as img:
        image = img.convert("RGB")
    sx, sy = size / image.width, size / image.height
    image = image.resize((size, size))
    draw = ImageDraw.Draw(image)
    colours = [(255, 40, 40), (40, 220, 40), (60, 120, 255)]
    for k, (box, p) in enumerate(zip(boxes.tolist(), probs.tolist(), strict=True)):
        top, left, h, w = box if box[0] >= 0 else (0, 0, image.height / sy, image.width / sx)
        width = 1 + round(3 * p)
        draw.rectangle((left * sx, top * sy, (left + w) * sx - 1, (top + h) * sy - 1), outline=colours[k % 3],
                       width=width)  # fmt: skip
    return image


class COSModule(SuiteModule):
    """COS as a predict-stage module (module docstring).

    Args:
        backbone: the Exemplar stage's backbone; configs build it with ``registered_model`` and its ``pretrained``
            (the Exemplar checkpoint, whose ``backbone.`` weights load), which a command-line run must set.
        output: where the COS file is written (``data.cos_file`` of the training stage).
        n_clusters: K of the per-class K-means (5).
        threshold: coverage a cluster needs to count as a shared object (0.5).
        top_k: views kept per image (3).
        seed: K-means seed (0, as the official code).
        picture_images: images drawn with their kept crops in ``<run>/pictures/predict_cos_crops.png`` (0: none).
    """

    def __init__(self, backbone: nn.Module, *, output: str = "runs/cos/cos.pt", n_clusters: int = 5,
                 threshold: float = 0.5, top_k: int = 3, seed: int = 0, picture_images: int = 16) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters_with_networks()
        config = self.hparams.get("backbone")  # the config form, when built from a config (module docstring)
        if isinstance(config, dict) and not (config.get("init_args") or {}).get("pretrained"):
            raise ConfigError(f"COS needs a pre-trained backbone: set --{PRETRAINED_KEY} to the Exemplar stage's "
                              "checkpoint (runs/<exemplar run>/version_*/checkpoints/last.ckpt)")  # fmt: skip
        if not 0 <= threshold < 1 or n_clusters < 1 or top_k < 1:
            raise ConfigError(f"need 0 <= threshold < 1, n_clusters >= 1, top_k >= 1 "
                              f"(got {threshold}, {n_clusters}, {top_k})")  # fmt: skip
        self.backbone = backbone
        self.output = output
        self.options = dict(n_clusters=n_clusters, threshold=threshold, top_k=top_k, seed=seed)
        self.picture_images = picture_images
        self.parts: list[dict[str, Tensor]] = []

    def on_predict_start(self) -> None:
        self.parts = []

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        views = batch["views"]
        feats = pooled_features(self.backbone.forward_features(views.flatten(0, 1))).view(*views.shape[:2], -1)
        self.parts.append({"index": batch["index"].cpu(), "target": batch["target"].cpu(),
                           "features": feats.half().cpu(), "boxes": batch["boxes"].cpu()})  # fmt: skip

    def on_predict_epoch_end(self) -> None:
        trainer = self.trainer
        run_dir = Path(trainer.default_root_dir)
        part = {k: torch.cat([p[k] for p in self.parts]) for k in ("index", "target", "features", "boxes")}
        if trainer.world_size > 1:  # every rank saves its shard; rank 0 merges them
            buffer = io.BytesIO()
            torch.save(part, buffer)
            atomic_write_bytes(run_dir / f"cos_part_rank{trainer.global_rank}.pt", buffer.getvalue())
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                shards = [torch.load(run_dir / f"cos_part_rank{r}.pt", weights_only=True)
                          for r in range(trainer.world_size)]  # fmt: skip
                part = {k: torch.cat([s[k] for s in shards]) for k in part}
        if trainer.is_global_zero:
            self.write(part, run_dir)
        if trainer.world_size > 1:
            trainer.strategy.barrier()

    def write(self, part: dict[str, Tensor], run_dir: Path) -> None:
        data = self.trainer.predict_dataloaders.dataset
        index, order = np.unique(part["index"].numpy(), return_index=True)  # DDP padding repeats some images
        features, labels, boxes = part["features"][order].float(), part["target"][order], part["boxes"][order]
        found = seek_objects(features, labels, **self.options)
        rows = torch.arange(len(index))[:, None]
        kept_boxes = boxes[rows, found["views"]]
        root = getattr(self.trainer.datamodule, "root", None)
        result = {
            "paths": [relative_key(data.paths[i], root) for i in index.tolist()],
            "boxes": kept_boxes,
            "probs": found["probs"],
            "distances": found["distances"],
            "options": self.options,
        }
        buffer = io.BytesIO()
        torch.save(result, buffer)
        os.makedirs(Path(self.output).parent, exist_ok=True)
        atomic_write_bytes(self.output, buffer.getvalue())
        shown = np.linspace(0, len(index) - 1, min(self.picture_images, len(index))).round().astype(int)
        tiles = [draw_crops(data.paths[index[i]], kept_boxes[i], found["probs"][i]) for i in shown]
        picture = None
        if tiles:
            cols = min(8, len(tiles))
            grid = Image.new("RGB", (cols * 128, -(-len(tiles) // cols) * 128))
            for i, tile in enumerate(tiles):
                grid.paste(tile, ((i % cols) * 128, (i // cols) * 128))
            picture = save_picture(self.trainer, "predict_cos_crops", torch.from_numpy(np.array(grid)).permute(2, 0, 1))
            for logger in self.loggers:
                if hasattr(logger.experiment, "add_image"):
                    logger.experiment.add_image("cos/crops", np.asarray(grid), 0, dataformats="HWC")
        wrote = f"{self.output} and {picture}" if picture is not None else self.output
        print(f"\nCOS: {len(index)} images, {len(found['coverage'])} classes; mean foreground probability "
              f"{found['probs'].sum(1).mean():.3f}; wrote {wrote}")  # fmt: skip
