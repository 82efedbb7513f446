"""DE-Net losses: DAMSM's word and sentence losses against the numbers AttnGAN's released code computes
(``../shared/golden/attngan_damsm_losses.pt``), the class mask, the discriminator hinge and MA-GP by hand, and one
manual-optimisation step that moves both networks."""

from __future__ import annotations

import pytest
import torch

from experiments.errors import ConfigError
from lightning_modules.editing import losses
from lightning_modules.editing.damsm import BiLSTMTextEncoder
from lightning_modules.editing.losses import damsm_losses, posterior_loss, word_relevance
from tests.helpers import load_golden


def attngan_inputs_in_our_layout(case: dict) -> tuple:
    """The golden's AttnGAN layouts -> ``damsm_losses``' arguments: ``img_features [B, nef, 17, 17]`` -> regions
    ``[B, 289, nef]``; ``words_emb [B, nef, L]`` -> ``[B, L, nef]``; ``cap_lens [B]`` -> a word mask ``[B, L]``;
    ``class_ids`` (a tensor or None) as it is."""
    regions = case["img_features"].flatten(2).transpose(1, 2)
    words = case["words_emb"].transpose(1, 2)
    mask = torch.arange(words.shape[1])[None] < case["cap_lens"][:, None]
    class_ids = case["class_ids"]
    if class_ids is not None:
        class_ids = torch.as_tensor(class_ids)
        assert (class_ids >= 0).all()  # our "no class" marker (-1) never occurs in the reference's class ids
    return regions, case["cnn_code"], words, case["sent_emb"], mask, class_ids


@pytest.mark.parametrize("index", [0, 1], ids=["with_class_ids", "without_class_ids"])
def test_damsm_losses_reproduce_attngan_words_loss_and_sent_loss(index):
    case = load_golden("attngan_damsm_losses.pt")["cases"][index]
    gammas = case["gamma1"], case["gamma2"], case["gamma3"]
    got = damsm_losses(*attngan_inputs_in_our_layout(case), *gammas)
    for ours, reference in (("word_i2t", "words_loss0"), ("word_t2i", "words_loss1"),
                            ("sentence_i2t", "sent_loss0"), ("sentence_t2i", "sent_loss1")):  # fmt: skip
        assert got[ours].item() == pytest.approx(case[reference].item(), abs=1e-5), (ours, reference)
    assert got["word"].item() == pytest.approx((case["words_loss0"] + case["words_loss1"]).item(), abs=1e-5)
    assert got["sentence"].item() == pytest.approx((case["sent_loss0"] + case["sent_loss1"]).item(), abs=1e-5)


def test_word_relevance_has_no_division_by_gamma2_as_attngan_words_loss():
    """Eq. 10 as the released ``words_loss`` computes it: ``log(sum_l exp(gamma2 cos_l))``, checked on a hand case.
    One region and one word per caption: the attention is 1, the context is the region, ``cos`` is that of the two
    vectors, so ``R = log(exp(gamma2 * cos)) = gamma2 * cos`` (the paper's ``1/gamma2`` exponent would give ``cos``)."""
    regions = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # [B=2, R=1, D=2]
    words = torch.tensor([[[1.0, 1.0]], [[0.0, 2.0]]])  # [B=2, L=1, D=2]
    mask = torch.ones(2, 1, dtype=torch.bool)
    got = word_relevance(regions, words, mask, gamma1=4.0, gamma2=5.0)
    cos = torch.tensor([[1 / 2**0.5, 0.0], [1 / 2**0.5, 1.0]])  # image i, caption j
    assert torch.allclose(got, 5.0 * cos, atol=1e-6)
    # a padded word changes nothing
    padded = word_relevance(regions, torch.cat([words, torch.randn(2, 1, 2)], 1),
                            torch.tensor([[True, False], [True, False]]), gamma1=4.0, gamma2=5.0)  # fmt: skip
    assert torch.allclose(padded, got, atol=1e-6)


def test_same_class_pairs_are_not_negatives():
    scores = torch.tensor([[2.0, 5.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    free = sum(posterior_loss(scores, None))
    masked = sum(posterior_loss(scores, torch.tensor([7, 7, 3])))  # images 0 and 1 share a class: no negative
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
    assert losses.hinge_d_loss(real, fake, mis).item() == pytest.approx(0.25 + 0.5 * (0.5 + 1.0))
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    s = torch.tensor([[3.0], [1.0]], requires_grad=True)
    out = (x * torch.tensor([1.0, 1.0])).sum(1) + 2 * s[:, 0]  # gradient (1, 1, 2) for each sample: norm sqrt(6)
    assert losses.matching_aware_penalty(out, x, s, power=6.0).item() == pytest.approx(6.0**3, rel=1e-5)


def test_damsm_with_the_offline_transformers_text_encoder(tmp_path):
    from datamodules.captions import TextEditingDataModule
    from datamodules.toy.edit_scenes import write_toy_edit_scenes
    from lightning_modules.editing.damsm import DAMSM, ImageEncoder, TextEncoder

    write_toy_edit_scenes(tmp_path / "toy", train=8, test=2, img_size=16)
    dm = TextEditingDataModule(root=str(tmp_path / "toy"), dataset="toy", image_size=16, val_images=0, batch_size=4,
                               num_workers=0, pin_memory=False)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = DAMSM(TextEncoder("minilm-offline", dim=32), ImageEncoder("resnet10t", 32, 32, train_backbone=True))
    words, sentence, mask = model.text_encoder(batch, "target_")
    assert sentence.shape == (4, 32) and words.shape[:2] == mask.shape and mask.any(1).all()
    losses = model.losses(batch)
    losses["loss"].backward()
    assert model.text_encoder.net.sent_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.net.encoder.parameters())  # the transformer stays frozen


def test_generator_and_discriminator_objectives_by_hand():
    assert losses.hinge_g_loss(torch.tensor([1.0, -3.0])).item() == pytest.approx(1.0)
    assert losses.l1_distance(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1.5)
    one = torch.tensor(1.0)
    assert losses.discriminator_objective(one, torch.tensor(0.5), gp_weight=2.0).item() == pytest.approx(2.0)
    # adv 1 + 0.5 * damsm 2 + 5 * rec 0.1 + 3 * keep 0.25
    terms = (one, torch.tensor(2.0), torch.tensor(0.1), torch.tensor(0.25))
    weights = {"lambda_damsm": 0.5, "lambda_rec": 5.0}
    assert losses.generator_objective(*terms, **weights, lambda_keep=3.0).item() == pytest.approx(3.25)
    assert losses.generator_objective(*terms, **weights, lambda_keep=0.0).item() == pytest.approx(2.5)


def small_damsm(vocab: int = 7, dim: int = 8):
    from lightning_modules.editing.damsm import DAMSM, ImageEncoder, TextEncoder

    return DAMSM(TextEncoder("bilstm", vocab, dim), ImageEncoder("resnet10t", dim, 32, train_backbone=True))


def test_denet_refuses_networks_that_do_not_fit_its_damsm():
    from lightning_modules.editing.damsm import DAMSM, ImageEncoder, TextEncoder
    from lightning_modules.editing.module import DENet
    from lightning_modules.editing.networks import DENetDiscriminator, DENetGenerator

    damsm = small_damsm()
    with pytest.raises(ConfigError, match=r"takes 256-d sentences but the DAMSM gives 8-d: set "
                       r"model.init_args.generator.init_args.cond_dim to 8"):  # fmt: skip
        DENet(DENetGenerator(2, 16), DENetDiscriminator(2, 16), damsm, fid=False)
    with pytest.raises(ConfigError, match=r"discriminator is built for 32 px, the generator for 16 px"):
        DENet(DENetGenerator(2, 16, 8), DENetDiscriminator(2, 32), damsm, fid=False)
    with pytest.raises(ConfigError, match=r"image encoder's is 4-d: set model.init_args.image_encoder.init_args.dim"):
        DAMSM(TextEncoder("bilstm", 7, 8), ImageEncoder("resnet10t", 4, 32))
    model = DENet(DENetGenerator(2, 16, 8), DENetDiscriminator(2, 16), damsm, fid=False)
    assert model.head.joint[0].in_channels == 2 * 2 + 8  # the discriminator's 2 ndf channels + the sentence
    assert not model.damsm.training and not any(p.requires_grad for p in model.damsm.parameters())
    assert "generator" not in model.hparams and model.hparams.lambda_rec == 1.0  # networks built in Python stay out


def test_a_damsm_checkpoint_from_before_the_injected_encoders_loads(tmp_path):
    from lightning_modules.editing.damsm import load_damsm

    damsm = small_damsm()
    old_hparams = {"text": "bilstm", "vocab_size": 7, "dim": 8, "image_backbone": "resnet10t", "image_input_size": 32,
                   "pretrained_backbone": "/no/such/weights.pth", "train_backbone": True, "gamma3": 9.0}  # fmt: skip
    torch.save({"state_dict": damsm.state_dict(), "hyper_parameters": old_hparams}, tmp_path / "old.ckpt")
    loaded = load_damsm(str(tmp_path / "old.ckpt"))
    assert loaded.gammas == (4.0, 5.0, 9.0) and not loaded.training
    assert all(torch.equal(v, damsm.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.save({"state_dict": damsm.state_dict(), "hyper_parameters": {"gamma1": 4.0}}, tmp_path / "python.ckpt")
    with pytest.raises(ConfigError, match="python.ckpt does not say how its DAMSM encoders were built"):
        load_damsm(str(tmp_path / "python.ckpt"))
