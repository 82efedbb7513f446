"""DE-Net networks: parameter counts against the official code, the official initialisation, the batched dynamic
convolution against a per-sample loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.editing.networks import (
    ConditionalHead,
    DEBlock,
    DENetDiscriminator,
    DENetGenerator,
    DynamicConv2d,
    TextAffine,
    num_stages,
)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_the_official_architecture():
    # official NetG(ngf=32) / NetD(32) / NetC(32) at 256 px with 256-d sentences (the COCO config): 18,755,667 /
    # 2,788,736 / 295,936. The official NetG also holds one unused [1, 8, 1, 1] bias per dynamic conv (6 of them);
    # ours does not register parameters that forward never reads.
    g = DENetGenerator(ngf=32, image_size=256, cond_dim=256)
    assert count(g) + 6 * 8 == 18_755_667
    d = DENetDiscriminator(ndf=32, image_size=256)
    assert count(d) == 2_788_736
    assert count(ConditionalHead(d.out_channels, 256, 32)) == 295_936
    assert len(g.edit) == 6 and len(g.down) == 6 and d.out_channels == 256


def test_shapes_and_bad_sizes():
    g = DENetGenerator(ngf=8, image_size=32, cond_dim=16)
    out = g(torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(3, 16))
    assert out.shape == (3, 3, 32, 32) and out.abs().max() <= 1
    d = DENetDiscriminator(ndf=8, image_size=32)
    feats = d(out)
    assert feats.shape == (3, d.out_channels, 4, 4)
    assert ConditionalHead(d.out_channels, 16, 8)(feats, torch.randn(3, 16)).shape == (3,)
    with pytest.raises(ValueError, match="built for 32 px"):
        g(torch.zeros(1, 3, 64, 64), torch.zeros(1, 16))
    with pytest.raises(ValueError, match="power of two"):
        num_stages(48)


def test_official_initialisation_composition_half_text_identity():
    torch.manual_seed(0)
    block = DEBlock(8, 4, cond_dim=16)
    code, sentence = torch.randn(5, 64), torch.randn(5, 16)
    assert torch.equal(block.composition_weights(code), torch.full((5, 4), 0.5))
    h = torch.randn(5, 4, 6, 6)
    assert torch.allclose(TextAffine(4, 16)(h, sentence), h)  # gamma = 1, beta = 0 for any sentence
    conv = DynamicConv2d(4, 3, 3, cond_dim=16)  # scale = 1, shift = 0: the static kernel for every sentence
    assert torch.allclose(conv(h, sentence), F.conv2d(h, conv.weight, padding=1), atol=1e-6)


def test_dynamic_convolution_equals_a_per_sample_loop():
    torch.manual_seed(0)
    conv = DynamicConv2d(5, 3, 3, cond_dim=12)
    for mlp in (conv.scale, conv.shift):  # leave the identity initialisation: kernels now differ per sentence
        torch.nn.init.normal_(mlp[2].weight, std=0.3)
    x, sentence = torch.randn(4, 5, 7, 9), torch.randn(4, 12)
    batched = conv(x, sentence)
    loop = []
    for b in range(4):
        scale = conv.scale(sentence[b : b + 1]).view(3, 5, 1, 1)
        shift = conv.shift(sentence[b : b + 1]).view(3, 5, 1, 1)
        loop.append(F.conv2d(x[b : b + 1], conv.weight * scale + shift, padding=1))
    assert torch.allclose(batched, torch.cat(loop), atol=1e-5)
    assert not torch.allclose(batched[0], F.conv2d(x[:1], conv.weight, padding=1)[0], atol=1e-3)


def test_generator_output_depends_on_the_sentence_through_every_branch():
    torch.manual_seed(0)
    g = DENetGenerator(ngf=8, image_size=16, cond_dim=8)
    for module in g.modules():  # move off the identity initialisation so that the text acts
        if isinstance(module, torch.nn.Linear) and module.weight.abs().sum() == 0:
            torch.nn.init.normal_(module.weight, std=0.2)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    a, b = g(image, torch.randn(2, 8)), g(image, torch.randn(2, 8))
    assert (a - b).abs().mean() > 1e-3
    (a - b).abs().mean().backward()
    for name in ("edit.0.channel.gamma.2.weight", "edit.0.spatial.conv.scale.2.weight", "edit.0.compose.weight"):
        assert g.get_parameter(name).grad.abs().sum() > 0, name
