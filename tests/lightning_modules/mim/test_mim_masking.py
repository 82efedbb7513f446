"""MIM masking: MAE random masking and BEiT block-wise masking (counts, geometry, reproducibility)."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.errors import ConfigError
from lightning_modules.mim.masking import BlockMaskGenerator, random_masking


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masked_neighbour_rate(mask: torch.Tensor, height: int, width: int) -> float:
    """P(a 4-neighbour of a masked patch is masked), averaged over all (masked patch, in-grid neighbour) pairs."""
    x = mask.view(-1, height, width).float()
    masked_neighbours = torch.zeros_like(x)
    neighbours = torch.zeros_like(x)
    ones = torch.ones_like(x)
    masked_neighbours[:, 1:] += x[:, :-1]
    masked_neighbours[:, :-1] += x[:, 1:]
    masked_neighbours[:, :, 1:] += x[:, :, :-1]
    masked_neighbours[:, :, :-1] += x[:, :, 1:]
    neighbours[:, 1:] += ones[:, :-1]
    neighbours[:, :-1] += ones[:, 1:]
    neighbours[:, :, 1:] += ones[:, :, :-1]
    neighbours[:, :, :-1] += ones[:, :, 1:]
    return float((masked_neighbours * x).sum() / (neighbours * x).sum())


# ---------------------------------------------------------------- random_masking


@pytest.mark.parametrize("num_patches, mask_ratio, expected_keep", [(196, 0.75, 49), (16, 0.6, 6), (10, 0.0, 10)])
def test_random_masking_counts_and_partition(num_patches, mask_ratio, expected_keep):
    batch = 8
    ids_keep, ids_restore, mask = random_masking(batch, num_patches, mask_ratio, generator=seeded())
    assert ids_keep.shape == (batch, expected_keep) and ids_keep.dtype == torch.long
    assert ids_restore.shape == (batch, num_patches) and ids_restore.dtype == torch.long
    assert mask.shape == (batch, num_patches) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [num_patches - expected_keep] * batch
    for b in range(batch):
        assert not mask[b, ids_keep[b]].any()
        kept = set(ids_keep[b].tolist())
        removed = set(mask[b].nonzero().squeeze(1).tolist())
        assert len(kept) == expected_keep
        assert kept.isdisjoint(removed)
        assert kept | removed == set(range(num_patches))


def test_random_masking_ids_restore_unshuffles():
    batch, n = 5, 12
    ids_keep, ids_restore, mask = random_masking(batch, n, 0.5, generator=seeded(3))
    x = torch.arange(batch * n, dtype=torch.float32).view(batch, n) * 10 + 1
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    torch.testing.assert_close(ids_shuffle[:, : ids_keep.shape[1]], ids_keep)
    x_shuffled = torch.gather(x, 1, ids_shuffle)
    torch.testing.assert_close(torch.gather(x_shuffled, 1, ids_restore), x)
    # MAE's decoder path: visible tokens + mask tokens (here -1), un-shuffled, put -1 exactly where mask is True.
    visible = torch.gather(x, 1, ids_keep)
    full = torch.cat([visible, torch.full((batch, n - ids_keep.shape[1]), -1.0)], dim=1)
    restored = torch.gather(full, 1, ids_restore)
    assert torch.equal(restored == -1.0, mask)
    torch.testing.assert_close(restored[~mask], x[~mask])


def test_random_masking_reproducible_and_varied():
    a = random_masking(64, 49, 0.75, generator=seeded(7))
    b = random_masking(64, 49, 0.75, generator=seeded(7))
    c = random_masking(64, 49, 0.75, generator=seeded(8))
    for left, right in zip(a, b, strict=True):
        assert torch.equal(left, right)
    assert not torch.equal(a[2], c[2])
    assert len({tuple(row.tolist()) for row in a[2]}) == 64  # every sample gets its own mask


def test_random_masking_rejects_bad_ratio():
    for ratio in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="mask_ratio"):
            random_masking(2, 16, ratio)


# ---------------------------------------------------------------- BlockMaskGenerator


@pytest.mark.parametrize(
    "grid, count, min_patches, min_distinct",
    [(14, 75, 16, 250), ((4, 4), 6, 16, 100), ((4, 4), 6, 2, 100), ((6, 9), 20, 4, 240)],
)
def test_block_mask_exact_count(grid, count, min_patches, min_distinct):
    generator = BlockMaskGenerator(grid, count, min_num_patches=min_patches)
    height, width = (grid, grid) if isinstance(grid, int) else grid
    mask = generator(256, generator=seeded())
    assert mask.shape == (256, height * width) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [count] * 256
    assert len({tuple(row.tolist()) for row in mask}) >= min_distinct  # samples differ


def test_block_mask_edge_counts():
    assert not BlockMaskGenerator(4, 0, min_num_patches=2)(3, generator=seeded()).any()
    assert BlockMaskGenerator(4, 16, min_num_patches=2)(3, generator=seeded()).all()


def test_block_mask_is_blocky_unlike_random_masking():
    height = width = 14
    block = BlockMaskGenerator(14, 75)(256, generator=seeded(1))
    _, _, random = random_masking(256, 196, 1 - 121 / 196, generator=seeded(1))
    assert random.sum(dim=1).tolist() == [75] * 256
    block_rate = masked_neighbour_rate(block, height, width)
    random_rate = masked_neighbour_rate(random, height, width)
    # Random masking: a neighbour is masked with probability 74/195 ~ 0.38; BEiT rectangles make it ~0.85.
    assert abs(random_rate - 74 / 195) < 0.03
    assert block_rate > 0.8
    # And nearly every masked patch touches another masked one.
    x = block.view(-1, height, width)
    padded = torch.nn.functional.pad(x.float(), (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    assert float(((neighbours > 0) & x).sum() / x.sum()) > 0.95


@pytest.mark.parametrize(
    "grid, count, min_patches, min_aspect", [(14, 75, 16, 0.3), ((4, 4), 6, 2, 0.3), (10, 40, 4, 0.5)]
)
def test_block_mask_blocks_follow_beit_algorithm(grid, count, min_patches, min_aspect):
    generator = BlockMaskGenerator(grid, count, min_num_patches=min_patches, min_aspect=min_aspect)
    height, width = (grid, grid) if isinstance(grid, int) else grid
    batch = 128
    mask, blocks = generator(batch, generator=seeded(2), return_blocks=True)
    assert len(blocks.sample) > batch  # several blocks per sample on average
    h, w = blocks.height.double(), blocks.width.double()
    # BEiT's strict inequality and in-grid placement.
    assert (blocks.height >= 1).all() and (blocks.width >= 1).all()
    assert (blocks.height < height).all() and (blocks.width < width).all()
    assert (blocks.top >= 0).all() and (blocks.top + blocks.height <= height).all()
    assert (blocks.left >= 0).all() and (blocks.left + blocks.width <= width).all()
    # h = round(sqrt(s r)), w = round(sqrt(s / r)): r = sqrt(s r) / sqrt(s / r) lies in
    # [(h - 1/2) / (w + 1/2), (h + 1/2) / (w - 1/2)], which must meet [min_aspect, 1 / min_aspect].
    max_aspect = 1 / min_aspect
    upper = torch.where(w > 0.5, (h + 0.5) / (w - 0.5), torch.full_like(h, math.inf))
    assert (upper >= min_aspect - 1e-9).all()
    assert ((h - 0.5) / (w + 0.5) <= max_aspect + 1e-9).all()
    # Target area s ~ U(min_num_patches, budget) and s = sqrt(s r) * sqrt(s / r) in [(h-1/2)(w-1/2), (h+1/2)(w+1/2)].
    low = torch.minimum(blocks.budget, torch.full_like(blocks.budget, min_patches)).double()
    high = torch.maximum(blocks.budget, torch.full_like(blocks.budget, min_patches)).double()
    assert ((h + 0.5) * (w + 0.5) >= low - 1e-9).all()
    assert ((h - 0.5) * (w - 0.5) <= high + 1e-9).all()
    # Accepted only if it adds 0 < new <= budget patches.
    assert (blocks.added > 0).all() and (blocks.added <= blocks.budget).all()
    assert (blocks.added <= blocks.height * blocks.width).all()
    # The block phase's mask is the union of the accepted rectangles; the top-up fills exactly the rest.
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    rect = (
        (rows >= blocks.top.view(-1, 1, 1))
        & (rows < (blocks.top + blocks.height).view(-1, 1, 1))
        & (cols >= blocks.left.view(-1, 1, 1))
        & (cols < (blocks.left + blocks.width).view(-1, 1, 1))
    )
    union = torch.zeros(batch, height, width).index_add_(0, blocks.sample, rect.float()) > 0
    added_per_sample = torch.zeros(batch, dtype=torch.long).index_add_(0, blocks.sample, blocks.added)
    assert union.view(batch, -1).sum(dim=1).tolist() == added_per_sample.tolist()
    assert not (union.view(batch, -1) & ~mask).any()  # every block patch is in the final mask
    assert (added_per_sample + blocks.topped_up).tolist() == [count] * batch
    assert ((mask & ~union.view(batch, -1)).sum(dim=1) == blocks.topped_up).all()
    # Blocks are accepted round by round, so within a sample their budgets shrink as patches are masked.
    for b in range(0, batch, 17):
        mine = blocks.sample == b
        remaining = count - torch.cumsum(blocks.added[mine], 0)
        expected_budget = torch.cat([torch.tensor([count]), remaining[:-1]]).clamp(max=generator.max_num_patches)
        assert blocks.budget[mine].tolist() == expected_budget.tolist()


def test_block_mask_max_num_patches_caps_blocks():
    generator = BlockMaskGenerator(14, 75, min_num_patches=4, max_num_patches=9)
    mask, blocks = generator(64, generator=seeded(4), return_blocks=True)
    assert mask.sum(dim=1).tolist() == [75] * 64
    assert (blocks.budget <= 9).all() and (blocks.added <= 9).all()
    assert ((blocks.height.double() - 0.5) * (blocks.width.double() - 0.5) <= 9).all()


def test_block_mask_reproducible():
    generator = BlockMaskGenerator(14, 75)
    a = generator(32, generator=seeded(5))
    b = generator(32, generator=seeded(5))
    c = generator(32, generator=seeded(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(grid=4, num_masking_patches=17), "num_masking_patches"),
        (dict(grid=4, num_masking_patches=-1), "num_masking_patches"),
        (dict(grid=4, num_masking_patches=6, min_num_patches=0), "min_num_patches"),
        (dict(grid=4, num_masking_patches=6, max_num_patches=0), "max_num_patches"),
        (dict(grid=4, num_masking_patches=6, min_aspect=0.0), "min_aspect"),
        (dict(grid=4, num_masking_patches=6, min_aspect=0.5, max_aspect=0.4), "max_aspect"),
        (dict(grid=4, num_masking_patches=6, max_attempts=0), "max_attempts"),
        (dict(grid=(0, 4), num_masking_patches=0), "grid"),
    ],
)
def test_block_mask_rejects_bad_arguments(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        BlockMaskGenerator(**kwargs)


def test_block_mask_repr_and_defaults():
    generator = BlockMaskGenerator((14, 12), 75)
    assert generator.max_num_patches == 75
    assert generator.max_aspect == pytest.approx(1 / 0.3)
    assert generator.num_patches == 168
    text = repr(generator)
    assert text.startswith("BlockMaskGenerator(grid=(14, 12), num_masking_patches=75, min_num_patches=16")
    assert "max_attempts=10" in text
