"""Tiny detectors and batches shared by the detection tests (backbones, cascade, module)."""

import torch

ITPN = "itpn_base_3324_patch16_224"
# tiny HiViT (as in tests/lightning_modules/backbones/test_hivit.py), rpe off as in the official pixel-B det recipe
# (variable image sizes)
TOY_HIVIT = dict(img_size=64, embed_dim=64, mlp_depth=1, depth=2, num_heads=2, fpn_dim=32, rpe=False)
SMALL_RCNN = dict(
    min_size=64,
    max_size=64,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=16,
    box_detections_per_img=10,
    box_score_thresh=0.0,
    head_channels=16,  # the heads dominate a CPU step; 256 / 1024 by default
    representation_size=64,
)


def box_target(boxes: list[list[float]], labels: list[int], size: int = 64) -> dict[str, torch.Tensor]:
    """A torchvision target whose masks fill the boxes."""
    b = torch.tensor(boxes)
    assert (b[:, 2:] > b[:, :2]).all() and b.min() >= 0 and b.max() <= size, (
        f"boxes {boxes} are not x0<x1, y0<y1 in 0..{size}"
    )
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(b.int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    return {"boxes": b, "labels": torch.tensor(labels, dtype=torch.int64), "masks": masks}


def toy_batch(size: int = 64) -> tuple[list[torch.Tensor], list[dict]]:
    """Two random images with one and two boxes (labels 1, then 1 and 2)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    targets = []
    for boxes in ([[4.0, 6.0, 40.0, 44.0]], [[10.0, 8.0, 30.0, 50.0], [34.0, 30.0, 60.0, 62.0]]):
        targets.append(box_target(boxes, list(range(1, len(boxes) + 1)), size))
    return images, targets
