"""Image-text retrieval metric: hand-computed ranks, ties, a loop reference, deduplication and DDP-style merging."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.retrieval.metrics import ImageTextRetrieval

KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _values(result: dict[str, torch.Tensor]) -> dict[str, float]:
    """The metric's output as plain floats."""
    return {key: float(value) for key, value in result.items()}


def _assert_results_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys and the same recalls (counts of hits, so equal up to float32 rounding of the mean)."""
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-4, msg=key)


def _retrieval_set(seed: int, num_images: int, captions: list[int] | int, dim: int = 16) -> dict[str, torch.Tensor]:
    """Random image/caption embeddings; captions correlate with their image. Ids are sparse, captions shuffled."""
    gen = torch.Generator().manual_seed(seed)
    counts = [captions] * num_images if isinstance(captions, int) else captions
    image_ids = torch.randperm(10 * num_images, generator=gen)[:num_images]
    image_embeds = torch.randn(num_images, dim, generator=gen)
    owner = torch.repeat_interleave(torch.arange(num_images), torch.tensor(counts))
    text_embeds = image_embeds[owner] + 1.5 * torch.randn(owner.numel(), dim, generator=gen)
    shuffle = torch.randperm(owner.numel(), generator=gen)
    return {
        "image_embeds": image_embeds,
        "image_ids": image_ids,
        "text_embeds": text_embeds[shuffle] * 3.0,
        "text_image_ids": image_ids[owner][shuffle],
        "text_ids": 1000 + torch.randperm(5 * owner.numel(), generator=gen)[: owner.numel()],
    }


def _reference(data: dict[str, torch.Tensor], ks: tuple[int, ...]) -> dict[str, float]:
    """Slow loop implementation in float64: sort every query's candidates and find the first ground truth."""
    images = [[float(v) for v in row] for row in data["image_embeds"]]
    texts = [[float(v) for v in row] for row in data["text_embeds"]]
    image_ids = [int(i) for i in data["image_ids"]]
    owners = [int(i) for i in data["text_image_ids"]]

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    sim = [[cosine(image, text) for text in texts] for image in images]
    i2t_ranks = []
    for i, image_id in enumerate(image_ids):
        order = sorted(range(len(texts)), key=lambda t: -sim[i][t])
        i2t_ranks.append(min(pos for pos, t in enumerate(order) if owners[t] == image_id))
    t2i_ranks = []
    for t, owner in enumerate(owners):
        order = sorted(range(len(images)), key=lambda i: -sim[i][t])
        t2i_ranks.append([image_ids[i] for i in order].index(owner))
    result = {}
    for name, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        for k in ks:
            result[f"{name}_r{k}"] = 100.0 * sum(rank < k for rank in ranks) / len(ranks)
    result["rsum"] = sum(result.values())
    return result


def test_hand_computed_ranks_and_recalls():
    """3 one-hot images, 2 captions each; the captions are unit vectors, so S[i, t] is component i of caption t."""
    # Images (scaled to check the normalisation): I0 = e0, I1 = e1, I2 = e2.
    image_embeds = torch.eye(3) * torch.tensor([[2.0], [0.5], [7.0]])
    captions = torch.tensor([
        [0.48, 0.80, 0.36],  # t0 -> I0
        [0.64, 0.60, 0.48],  # t1 -> I0
        [0.60, 0.48, 0.64],  # t2 -> I1
        [0.80, 0.48, 0.36],  # t3 -> I1
        [0.48, 0.60, 0.64],  # t4 -> I2
        [0.60, 0.00, 0.80],  # t5 -> I2
    ])  # fmt: skip
    text_embeds = captions * torch.tensor([[3.0], [1.0], [0.25], [2.0], [1.0], [5.0]])
    # S (rows I0..I2, columns t0..t5):
    #   I0: .48  .64 | .60  .80  .48  .60      GT t0, t1
    #   I1: .80  .60 | .48  .48 | .60  .00     GT t2, t3
    #   I2: .36  .48  .64  .36 | .64  .80      GT t4, t5
    # I2T: I0 best GT .64 (t1), non-GT above: t3 (.80)            -> rank 1
    #      I1 best GT .48 (t2 = t3), non-GT above: t0, t1, t4      -> rank 3
    #      I2 best GT .80 (t5), non-GT above: none                 -> rank 0
    #   R@1 = 1/3 = 33.33, R@2 = 2/3 = 66.67, R@5 = 3/3 = 100
    # T2I: t0 GT .48, others .80 .36 -> 1;  t1 GT .64, others .60 .48 -> 0;  t2 GT .48, others .60 .64 -> 2
    #      t3 GT .48, others .80 .36 -> 1;  t4 GT .64, others .48 .60 -> 0;  t5 GT .80, others .60 .00 -> 0
    #   ranks [1, 0, 2, 1, 0, 0]: R@1 = 3/6 = 50, R@2 = 5/6 = 83.33, R@5 = 100
    # RSUM = 100/3 + 200/3 + 100 + 50 + 250/3 + 100 = 433.33
    metric = ImageTextRetrieval(ks=(1, 2, 5))
    metric.update(image_embeds, torch.tensor([10, 11, 12]), text_embeds, torch.tensor([10, 10, 11, 11, 12, 12]))
    result = _values(metric.compute())
    expected = {
        "i2t_r1": 100 / 3, "i2t_r2": 200 / 3, "i2t_r5": 100.0,
        "t2i_r1": 50.0, "t2i_r2": 250 / 3, "t2i_r5": 100.0,
        "rsum": 1300 / 3,
    }  # fmt: skip
    assert list(result) == list(expected)
    assert result == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("ties", "expected"),
    [
        ("optimistic", {"i2t_r1": 100.0, "i2t_r2": 100.0, "t2i_r1": 100.0, "t2i_r2": 100.0, "rsum": 400.0}),
        ("pessimistic", {"i2t_r1": 50.0, "i2t_r2": 100.0, "t2i_r1": 100 / 3, "t2i_r2": 100.0, "rsum": 850 / 3}),
    ],
)
def test_ties(ties, expected):
    """Exact ties (every score is exactly representable): strictly higher vs higher-or-equal competitors."""
    # I0 = e0, I1 = e1; c0 -> I0 and c2 -> I1 are both (1, 1) / sqrt(2) =: s each component, c1 -> I1 is e1.
    # S: I0: [s, 0, s], I1: [s, 1, s] (1 * s + 0 * s = s exactly in any summation order).
    # I2T: I0's GT c0 scores s and non-GT c2 ties at s -> rank 0 optimistic, 1 pessimistic; I1's GT c1 scores 1 > s.
    # T2I: c0 (GT I0 = s, I1 = s) and c2 (GT I1 = s, I0 = s) tie -> rank 0 / 1; c1: GT 1 > 0 -> rank 0.
    metric = ImageTextRetrieval(ks=(1, 2), ties=ties)
    text_embeds = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    metric.update(torch.eye(2), torch.tensor([0, 1]), text_embeds, torch.tensor([0, 1, 1]))
    assert _values(metric.compute()) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("seed", "captions"),
    [(0, 5), (1, 5), (2, 5), (3, [1, 5, 2, 6, 3, 5, 4, 1, 5, 2, 3, 5, 5, 1, 2, 4, 5, 3])],
)
def test_matches_loop_reference(seed, captions):
    """Five captions per image (and a varying number) against the sorting loop reference; small chunks on."""
    num_images = 18
    data = _retrieval_set(seed, num_images, captions)
    metric = ImageTextRetrieval(ks=(1, 5, 10))
    metric.chunk_size = 7  # several chunks, the last one partial, in both directions
    metric.update(**data)
    result = _values(metric.compute())
    assert list(result) == list(KEYS)
    expected = _reference(data, (1, 5, 10))
    assert result == pytest.approx(expected, abs=1e-4)
    assert 0.0 < result["i2t_r1"] < 100.0 and 0.0 < result["t2i_r1"] < 100.0  # not a degenerate case


def test_perfect_embeddings_give_full_recall():
    """Orthogonal images, every caption equal to its image: 100 everywhere and RSUM 600."""
    num_images = 6
    image_embeds = torch.eye(num_images)
    owner = torch.arange(num_images).repeat_interleave(5)
    metric = ImageTextRetrieval()
    metric.update(
        image_embeds, torch.arange(num_images), image_embeds[owner], owner, text_ids=torch.arange(owner.numel())
    )
    result = _values(metric.compute())
    assert result == pytest.approx({key: 600.0 if key == "rsum" else 100.0 for key in KEYS})


def _padded_batches(data: dict[str, torch.Tensor], seed: int, num_batches: int) -> list[dict[str, torch.Tensor]]:
    """Shuffled, unevenly split batches, with the first images and captions repeated as a sampler pads them."""
    gen = torch.Generator().manual_seed(seed)
    image_order = torch.randperm(data["image_ids"].numel(), generator=gen)
    text_order = torch.randperm(data["text_ids"].numel(), generator=gen)
    image_order = torch.cat([image_order, image_order[:3]])
    text_order = torch.cat([text_order, text_order[:4]])
    image_cuts = torch.linspace(0, image_order.numel(), num_batches + 1).long().tolist()
    text_cuts = torch.linspace(0, text_order.numel(), num_batches + 1).long().tolist()
    batches = []
    for b in range(num_batches):
        images = image_order[image_cuts[b] : image_cuts[b + 1]]
        texts = text_order[text_cuts[b] : text_cuts[b + 1]]
        batches.append({
            "image_embeds": data["image_embeds"][images],
            "image_ids": data["image_ids"][images],
            "text_embeds": data["text_embeds"][texts],
            "text_image_ids": data["text_image_ids"][texts],
            "text_ids": data["text_ids"][texts],
        })  # fmt: skip
    return batches


@pytest.mark.parametrize("with_text_ids", [True, False])
def test_split_shuffled_padded_updates_match_one_update(with_text_ids):
    """Several updates in another order (with padded duplicates when caption ids are given) give the single-update
    result."""
    data = _retrieval_set(seed=4, num_images=20, captions=5)
    single = ImageTextRetrieval()
    single.update(**data)
    expected = single.compute()

    split = ImageTextRetrieval()
    if with_text_ids:
        batches = _padded_batches(data, seed=5, num_batches=4)
    else:  # without caption ids nothing is deduplicated: shuffled, unpadded batches
        order = torch.randperm(data["text_embeds"].shape[0], generator=torch.Generator().manual_seed(5))
        batches = [
            {"image_embeds": data["image_embeds"][i::4], "image_ids": data["image_ids"][i::4],
             "text_embeds": data["text_embeds"][order[i::4]], "text_image_ids": data["text_image_ids"][order[i::4]]}
            for i in range(4)
        ]  # fmt: skip
    for batch in batches:
        split.update(**batch)
    _assert_results_equal(split.compute(), expected)


def test_two_ranks_merged_match_one_instance():
    """DDP without processes: two ranks' states (disjoint halves + a padded repeat) merged with ``merge_state``."""
    data = _retrieval_set(seed=6, num_images=20, captions=5)
    single = ImageTextRetrieval(ks=(1, 2, 5))
    single.update(**data)
    expected = single.compute()

    rank0, rank1 = ImageTextRetrieval(ks=(1, 2, 5)), ImageTextRetrieval(ks=(1, 2, 5))
    batches = _padded_batches(data, seed=7, num_batches=4)
    for batch in batches[:2]:
        rank0.update(**batch)
    for batch in batches[2:]:
        rank1.update(**batch)
    rank0.merge_state(rank1)
    _assert_results_equal(rank0.compute(), expected)


def test_missing_image_id_raises_naming_it():
    """A caption whose image never arrived is an error naming the id."""
    metric = ImageTextRetrieval()
    metric.update(torch.eye(3), torch.tensor([0, 1, 2]), torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 77]))
    with pytest.raises(ValueError, match=r"no image .*\[77\]"):
        metric.compute()


def test_invalid_inputs_raise():
    """Images without captions, text_ids in some updates only, one caption id for two images, bad arguments."""
    metric = ImageTextRetrieval()
    metric.update(torch.eye(3), torch.tensor([0, 1, 5]), torch.eye(3)[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"no caption .*\[5\]"):
        metric.compute()

    metric = ImageTextRetrieval()
    metric.update(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1]), text_ids=torch.tensor([3, 4]))
    metric.update(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="every ImageTextRetrieval.update or to none"):
        metric.compute()

    metric = ImageTextRetrieval()
    metric.update(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1]), text_ids=torch.tensor([3, 3]))
    with pytest.raises(ValueError, match=r"two different image ids: \[3\]"):
        metric.compute()

    with pytest.raises(ValueError, match="before any update"), pytest.warns(UserWarning, match="before the ``update``"):
        ImageTextRetrieval().compute()
    with pytest.raises(ValueError, match="differ in width"):
        ImageTextRetrieval().update(torch.eye(2), torch.tensor([0, 1]), torch.eye(3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="integer ids"):
        ImageTextRetrieval().update(torch.eye(2), torch.tensor([0.0, 1.0]), torch.eye(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ks must be"):
        ImageTextRetrieval(ks=(0, 5))
    with pytest.raises(ValueError, match="ties must be"):
        ImageTextRetrieval(ties="random")
