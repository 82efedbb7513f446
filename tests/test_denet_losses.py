"""DE-Net losses: DAMSM's vectorised word relevance against AttnGAN's per-caption loop, the class mask, the
discriminator hinge and MA-GP by hand, and one manual-optimisation step that moves both networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.errors import ConfigError
from lightning_modules.editing.damsm import BiLSTMTextEncoder, _posterior_loss, damsm_losses, word_relevance
from lightning_modules.editing.module import hinge_d_loss, matching_aware_penalty


def test_word_relevance_equals_attngan_per_caption_loop():
    torch.manual_seed(0)
    B, R, L, D = 3, 5, 4, 6
    regions, words = torch.randn(B, R, D), torch.randn(B, L, D)
    lengths = torch.tensor([4, 2, 3])
    mask = torch.arange(L)[None] < lengths[:, None]
    got = word_relevance(regions, words, mask, gamma1=4.0, gamma2=5.0)
    for j in range(B):  # AttnGAN's words_loss: one caption at a time, its real words only
        w = words[j, : lengths[j]]
        for i in range(B):
            attn = (regions[i] @ w.t()).softmax(1)  # over words
            attn = (4.0 * attn).softmax(0)  # over regions
            context = attn.t() @ regions[i]
            cos = F.cosine_similarity(context, w, dim=-1)
            assert got[i, j].item() == pytest.approx((torch.log(torch.exp(5.0 * cos).sum()) / 5.0).item(), abs=1e-5)


def test_same_class_pairs_are_not_negatives():
    scores = torch.tensor([[2.0, 5.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    free = _posterior_loss(scores, None)
    masked = _posterior_loss(scores, torch.tensor([7, 7, 3]))  # images 0 and 1 share a class: (0, 1) is no negative
    assert masked < free
    by_hand = (-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0] - torch.log_softmax(torch.tensor([1.0, 0.0]), 0)[0]
               - torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), 0)[0]) / 3  # fmt: skip
    assert masked.item() == pytest.approx(2 * by_hand.item(), rel=1e-5)  # image->text and text->image agree here


def test_damsm_losses_are_low_for_aligned_and_high_for_shuffled_pairs():
    torch.manual_seed(0)
    base = torch.randn(4, 8)
    regions, words = base[:, None].repeat(1, 3, 1), base[:, None].repeat(1, 2, 1)
    mask = torch.ones(4, 2, dtype=torch.bool)
    aligned = damsm_losses(regions, base, words, base, mask)
    shuffled = damsm_losses(regions, base, words.roll(1, 0), base.roll(1, 0), mask)
    assert aligned["sentence"] < 0.1 and shuffled["sentence"] > 5
    assert aligned["word"] < shuffled["word"]


def test_bilstm_shapes_and_an_unknown_index_is_a_clear_error():
    enc = BiLSTMTextEncoder(vocab_size=10, hidden=4).eval()
    tokens = torch.tensor([[1, 2, 3], [4, 5, 0]])
    words, sentence = enc(tokens, torch.tensor([3, 2]))
    assert words.shape == (2, 3, 8) and sentence.shape == (2, 8)
    assert torch.equal(words[1, 2], torch.zeros(8))  # padding stays empty
    with pytest.raises(ConfigError, match="exceeds the text encoder's vocabulary"):
        enc(torch.tensor([[12]]), torch.tensor([1]))


def test_hinge_and_matching_aware_penalty_by_hand():
    real, fake, mis = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.0]), torch.tensor([1.0, -1.0])
    # relu(1 - real) = 0.5, 0 -> 0.25; relu(1 + fake) = 0, 1 -> 0.5; relu(1 + mis) = 2, 0 -> 1
    assert hinge_d_loss(real, fake, mis).item() == pytest.approx(0.25 + 0.5 * (0.5 + 1.0))
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    s = torch.tensor([[3.0], [1.0]], requires_grad=True)
    out = (x * torch.tensor([1.0, 1.0])).sum(1) + 2 * s[:, 0]  # gradient (1, 1, 2) for each sample: norm sqrt(6)
    assert matching_aware_penalty(out, x, s, power=6.0).item() == pytest.approx(6.0**3, rel=1e-5)


def test_damsm_with_the_offline_transformers_text_encoder(tmp_path):
    from datamodules.captions import TextEditingDataModule
    from datamodules.toy.edit_scenes import write_toy_edit_scenes
    from lightning_modules.editing.damsm import DAMSM

    write_toy_edit_scenes(tmp_path / "toy", train=8, test=2, img_size=16)
    dm = TextEditingDataModule(root=str(tmp_path / "toy"), dataset="toy", image_size=16, val_images=0, batch_size=4,
                               num_workers=0, pin_memory=False)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = DAMSM(text="minilm-offline", dim=32, image_backbone="resnet10t", image_input_size=32, train_backbone=True)
    words, sentence, mask = model.text_encoder(batch, "target_")
    assert sentence.shape == (4, 32) and words.shape[:2] == mask.shape and mask.any(1).all()
    losses = model.losses(batch)
    losses["loss"].backward()
    assert model.text_encoder.net.sent_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.net.encoder.parameters())  # the transformer stays frozen
