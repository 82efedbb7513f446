"""Released AttnGAN / DF-GAN DAMSM encoders: state dicts in the reference layout (AttnGAN ``code/model.py``
``RNN_ENCODER`` / ``CNN_ENCODER``, DF-GAN ``code/models/DAMSM.py``) load into our encoders with no key left over and
give the reference's outputs; wrong files get a named error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from experiments.errors import ConfigError
from lightning_modules.editing.damsm import (
    attngan_text_encoder_keys,
    convert_attngan_text_encoder,
    frozen_damsm,
    load_attngan_damsm,
)

# The reference's text-encoder parameters for a vocabulary of V words (RNN_ENCODER(ntoken=V, ninput=300,
# nhidden=256): embedding 300-d, nn.LSTM(300, 128, 1, batch_first=True, bidirectional=True)); 4 * 128 gate rows.
REFERENCE_TEXT_SHAPES = {
    "encoder.weight": ("V", 300),
    "rnn.weight_ih_l0": (512, 300),
    "rnn.weight_hh_l0": (512, 128),
    "rnn.bias_ih_l0": (512,),
    "rnn.bias_hh_l0": (512,),
    "rnn.weight_ih_l0_reverse": (512, 300),
    "rnn.weight_hh_l0_reverse": (512, 128),
    "rnn.bias_ih_l0_reverse": (512,),
    "rnn.bias_hh_l0_reverse": (512,),
}
# The reference's image-encoder heads (nef = 256); its Inception blocks are torchvision's, under torchvision's names.
REFERENCE_IMAGE_HEAD_SHAPES = {
    "emb_features.weight": (256, 768, 1, 1),
    "emb_cnn_code.weight": (256, 2048),
    "emb_cnn_code.bias": (256,),
}
INCEPTION_BLOCKS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b",
                    "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
                    "Mixed_7b", "Mixed_7c"]  # fmt: skip


class ReferenceTextEncoder(nn.Module):
    """AttnGAN's RNN_ENCODER layout and forward (evaluation mode): ``words_emb [B, 256, L]``, ``sent_emb [B, 256]``."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, 300)
        self.drop = nn.Dropout(0.5)
        self.rnn = nn.LSTM(300, 128, 1, batch_first=True, bidirectional=True)

    def forward(self, captions, cap_lens):  # captions sorted by decreasing length, as AttnGAN's prepare_data does
        packed = pack_padded_sequence(self.drop(self.encoder(captions)), cap_lens.tolist(), batch_first=True)
        output, (h, _) = self.rnn(packed)
        words_emb = pad_packed_sequence(output, batch_first=True)[0].transpose(1, 2)
        return words_emb, h.transpose(0, 1).contiguous().view(-1, 256)


class ReferenceImageEncoder(nn.Module):
    """DF-GAN's CNN_ENCODER layout (torchvision Inception-v3 blocks + the two embedding layers) and forward."""

    def __init__(self) -> None:
        super().__init__()
        inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        for name in INCEPTION_BLOCKS:
            setattr(self, name, getattr(inception, name))
        self.emb_features = nn.Conv2d(768, 256, 1, bias=False)
        self.emb_cnn_code = nn.Linear(2048, 256)

    def forward(self, x):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        for name in INCEPTION_BLOCKS:
            x = getattr(self, name)(x)
            if name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3"):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            if name == "Mixed_6e":
                features = x
        cnn_code = self.emb_cnn_code(F.avg_pool2d(x, kernel_size=8).flatten(1))
        return self.emb_features(features), cnn_code


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic random (so that a mis-mapped key changes the outputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif tensor.is_floating_point():
                tensor.copy_(0.05 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


def reference_text_state(vocab: int = 40) -> dict[str, torch.Tensor]:
    """A random state dict with the reference's text-encoder names and shapes (``REFERENCE_TEXT_SHAPES``)."""
    gen = torch.Generator().manual_seed(1)
    return {k: torch.randn([vocab if d == "V" else d for d in shape], generator=gen)
            for k, shape in REFERENCE_TEXT_SHAPES.items()}  # fmt: skip


@pytest.fixture(scope="module")
def released_files(tmp_path_factory):
    """``text_encoder200.pth`` / ``image_encoder200.pth`` saved from the reference layouts with random weights."""
    folder = tmp_path_factory.mktemp("DAMSMencoder")
    text, image = randomised(ReferenceTextEncoder(40), 2), randomised(ReferenceImageEncoder(), 3)
    torch.save(text.state_dict(), folder / "text_encoder200.pth")
    torch.save(image.state_dict(), folder / "image_encoder200.pth")
    return folder / "text_encoder200.pth", folder / "image_encoder200.pth", text, image


def test_reference_layouts_are_the_listed_ones(released_files):
    _, _, text, image = released_files
    assert {k: tuple(v.shape) for k, v in text.state_dict().items()} == {
        k: tuple(40 if d == "V" else d for d in s) for k, s in REFERENCE_TEXT_SHAPES.items()
    }
    assert list(REFERENCE_TEXT_SHAPES) == attngan_text_encoder_keys()
    heads = {k: tuple(v.shape) for k, v in image.state_dict().items() if k.startswith("emb_")}
    assert heads == REFERENCE_IMAGE_HEAD_SHAPES


def test_released_damsm_loads_every_key_and_gives_the_reference_outputs(released_files):
    text_path, image_path, ref_text, ref_image = released_files
    damsm = load_attngan_damsm(str(text_path), str(image_path))
    assert damsm.text_encoder.net.vocab_size == 40 and damsm.text_encoder.dim == 256
    assert not damsm.training and not any(p.requires_grad for p in damsm.parameters())
    # every file tensor is in our model, bit for bit (load_state_dict was strict: nothing missing or unexpected)
    ours_text = damsm.text_encoder.net.state_dict()
    assert torch.equal(ours_text["embed.weight"], ref_text.state_dict()["encoder.weight"])
    ours_image = damsm.image_encoder.state_dict()
    for name, tensor in ref_image.state_dict().items():
        key = {"emb_features.weight": "local.weight", "emb_cnn_code.weight": "glob.weight",
               "emb_cnn_code.bias": "glob.bias"}.get(name, f"backbone.{name}")  # fmt: skip
        assert torch.equal(ours_image[key], tensor), name

    tokens = torch.tensor([[5, 9, 3, 7], [2, 8, 1, 0]])  # sorted by length, 0-padded as AttnGAN's batches
    lengths = torch.tensor([4, 3])
    ref_words, ref_sentence = ref_text(tokens, lengths)
    words, sentence, mask = damsm.text_encoder({"tokens": tokens, "lengths": lengths})
    assert torch.allclose(words.transpose(1, 2)[..., : ref_words.shape[2]], ref_words, atol=1e-6)
    assert torch.allclose(sentence, ref_sentence, atol=1e-6)

    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1  # [-1, 1], as DE-Net's
    with torch.no_grad():
        ref_features, ref_code = ref_image(images)
        regions, image_global = damsm.image_encoder(images)
    assert regions.shape == (1, 17 * 17, 256) and ref_features.std() > 1e-2  # outputs of a useful scale (0.05 here)
    assert torch.allclose(regions, ref_features.flatten(2).transpose(1, 2), atol=1e-5)
    assert torch.allclose(image_global, ref_code, atol=1e-5)


def test_checkpoints_saved_before_pytorch_041_and_dataparallel_prefixes_load(released_files, tmp_path):
    text_path, image_path, _, ref_image = released_files
    old = {k: v for k, v in ref_image.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({f"module.{k}": v for k, v in old.items()}, tmp_path / "image_encoder.pth")
    damsm = load_attngan_damsm(str(text_path), str(tmp_path / "image_encoder.pth"))
    assert torch.equal(damsm.image_encoder.local.weight, ref_image.emb_features.weight)


def test_wrong_damsm_files_get_named_errors(released_files, tmp_path):
    text_path, image_path, _, _ = released_files
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(
        ConfigError, match=r"list.pth' is not a state dict of tensors .*DAMSMencoders/bird/text_encoder200.pth"
    ):
        load_attngan_damsm(str(tmp_path / "list.pth"), str(image_path))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"text.pth' is not a PyTorch state dict"):
        load_attngan_damsm(str(tmp_path / "text.pth"), str(image_path))
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "lightning.ckpt")
    with pytest.raises(ConfigError, match=r"is a Lightning checkpoint.*model.init_args.damsm"):
        load_attngan_damsm(str(tmp_path / "lightning.ckpt"), str(image_path))
    with pytest.raises(ConfigError, match=r"no_such.pth' does not exist"):
        load_attngan_damsm(str(tmp_path / "no_such.pth"), str(image_path))
    # swapped paths: the key lists and the likely cause are named
    swapped = r"\(this is an image encoder's state dict: the two paths look swapped\): missing \(9\): encoder.weight"
    with pytest.raises(ConfigError, match=r"not an AttnGAN / DF-GAN DAMSM text encoder \(RNN_ENCODER\) " + swapped):
        load_attngan_damsm(str(image_path), str(text_path))
    with pytest.raises(ConfigError, match=r"image encoder \(CNN_ENCODER over Inception-v3\) \(this is a text "
                       r"encoder's state dict.*unexpected \(9\): encoder.weight"):  # fmt: skip
        load_attngan_damsm(str(text_path), str(text_path))


def test_wrong_shapes_and_keys_are_listed():
    state = reference_text_state()
    state["encoder.weight"] = torch.zeros(40, 200)  # a 200-d embedding: not the released 300-d one
    with pytest.raises(ConfigError, match=r"wrong shapes \(1\): encoder.weight \(40, 200\) \(expected \(40, 300\)\)"):
        convert_attngan_text_encoder(state)
    state = reference_text_state()
    state["rnn.weight_ih_l1"] = state.pop("rnn.weight_ih_l0_reverse")  # a two-layer unidirectional file, say
    with pytest.raises(
        ConfigError, match=r"missing \(1\): rnn.weight_ih_l0_reverse; unexpected \(1\): rnn.weight_ih_l1"
    ):
        convert_attngan_text_encoder(state)
    converted = convert_attngan_text_encoder(reference_text_state())
    assert sorted(converted) == sorted(["embed.weight"] + [k for k in REFERENCE_TEXT_SHAPES if k.startswith("rnn.")])


def test_frozen_damsm_needs_both_released_files_or_a_checkpoint(released_files):
    text_path, image_path, _, _ = released_files
    with pytest.raises(ConfigError, match="released_text_encoder is set but released_image_encoder is not"):
        frozen_damsm(None, str(text_path), None)
    with pytest.raises(ConfigError, match="released_image_encoder is set but released_text_encoder is not"):
        frozen_damsm(None, None, str(image_path))
    with pytest.raises(ConfigError, match="DE-Net needs a DAMSM"):
        frozen_damsm(None)
    damsm = frozen_damsm("runs/none/*/best.ckpt", str(text_path), str(image_path))  # the released pair wins
    assert damsm.text_encoder.net.vocab_size == 40
