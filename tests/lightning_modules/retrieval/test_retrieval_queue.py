"""L_CMC by hand (in-batch and with keys) and the momentum queue: EMA update, FIFO wrap-around, keys = batch + queue."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_modules.backbones import registered_model
from lightning_modules.retrieval.losses import contrastive_loss
from lightning_modules.retrieval.module import DualEncoderRetrieval
from lightning_modules.retrieval.text import pretrained_text_encoder


def test_contrastive_loss_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ids_img = torch.tensor([0, 1])
    # in-batch: 2 images x 2 captions, diagonal positives, scale 1
    expected = -math.log(math.e / (math.e + 1))
    assert abs(contrastive_loss(img, txt[:2], ids_img, torch.tensor(1.0)).item() - expected) < 1e-6
    # with keys: caption 2 belongs to image 1 too, so image 1 has two positives with targets 1/2 each
    keys = (img[[0, 1, 1]], txt, torch.tensor([0, 1, 1]))
    logits_i2t = img @ txt.t()
    i2t_0 = -F.log_softmax(logits_i2t[0], 0)[0]
    i2t_1 = -(F.log_softmax(logits_i2t[1], 0)[1] + F.log_softmax(logits_i2t[1], 0)[2]) / 2
    logits_t2i = txt[:2] @ img[[0, 1, 1]].t()
    t2i_0 = -F.log_softmax(logits_t2i[0], 0)[0]
    t2i_1 = -(F.log_softmax(logits_t2i[1], 0)[1] + F.log_softmax(logits_t2i[1], 0)[2]) / 2
    expected = ((i2t_0 + i2t_1) / 2 + (t2i_0 + t2i_1) / 2) / 2
    got = contrastive_loss(img, txt[:2], ids_img, torch.tensor(1.0), keys)
    torch.testing.assert_close(got, expected)


def test_momentum_queue_updates_and_wraps():
    torch.manual_seed(0)
    vit = dict(img_size=32, patch_size=8, depth=1, global_pool="avg", class_token=False)
    model = DualEncoderRetrieval(
        registered_model("vit_tiny_patch16_224", num_classes=0, kwargs=vit), pretrained_text_encoder("minilm-offline"),
        embed_dim=8, freeze_text_encoder=True, queue_size=5, momentum=0.5,
    )  # fmt: skip
    assert "text" not in model.momentum_encoders  # a frozen text encoder needs no EMA copy
    assert not any(p.requires_grad for p in model.momentum_encoders.parameters())
    with torch.no_grad():
        model.image_proj.weight.add_(1.0)  # move the online projection away from its momentum copy
    before = model.momentum_encoders["image_proj"].weight.clone()
    batch = {"image": torch.randn(3, 3, 32, 32), "captions": ["a red circle", "a blue square", "a star"],
             "image_ids": torch.tensor([7, 8, 9])}  # fmt: skip
    image_k, text_k, ids = model.momentum_keys(batch)
    torch.testing.assert_close(model.momentum_encoders["image_proj"].weight, (before + model.image_proj.weight) / 2)
    assert ids.tolist() == [7, 8, 9] and image_k.shape == (3, 8)  # an empty queue adds no key
    torch.testing.assert_close(image_k.norm(dim=-1), torch.ones(3))
    assert model.queue_ids.tolist() == [7, 8, 9, -1, -1] and int(model.queue_ptr) == 3
    batch2 = dict(batch, image_ids=torch.tensor([1, 2, 3]))
    _, text_k2, ids2 = model.momentum_keys(batch2)
    assert ids2.tolist() == [1, 2, 3, 7, 8, 9]  # the batch first, then the queue
    torch.testing.assert_close(text_k2[3:], text_k)  # the queued text keys are the earlier batch's
    assert model.queue_ids.tolist() == [3, 8, 9, 1, 2] and int(model.queue_ptr) == 1  # wrapped around
    loss = model.training_step(dict(batch, image_ids=torch.tensor([4, 5, 6])), 0)
    assert torch.isfinite(loss) and loss.requires_grad
