"""Released DE-Net checkpoints (tobran/DE-Net NetG / NetD / NetC) load into our networks and reproduce the reference
outputs of ``../shared/golden/denet_networks_small.pt``; wrong files get named errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.errors import ConfigError
from lightning_modules.editing.networks import ConditionalHead, DENetDiscriminator, DENetGenerator
from lightning_modules.editing.released import (
    build_released_networks,
    load_released_denet,
    released_config,
    released_state_dicts,
)
from tests.helpers import load_golden

GOLDEN = "denet_networks_small.pt"
TOL = 1e-5


def released(golden: dict) -> dict[str, dict]:
    """The golden's three state dicts under the names train.py saves them with."""
    return {"netG": golden["G_state_dict"], "netD": golden["D_state_dict"], "netC": golden["C_state_dict"]}


def run(g, d, c, images, sentence, training: bool) -> tuple[torch.Tensor, ...]:
    for net in (g, d, c):
        net.train(training)
    with torch.no_grad():
        fake = g(images, sentence)
        features = d(fake)
        return fake, features, c(features, sentence)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.reshape(b.shape) - b).abs().max().item()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_golden_weights_reproduce_the_reference_outputs(mode):
    golden = load_golden(GOLDEN)
    g, d, c = build_released_networks(golden)  # the golden's own {G,D,C}_state_dict container
    assert released_config(released(golden)) == {"ngf": 2, "ndf": 2, "image_size": 256, "cond_dim": 256}
    assert (g.image_size, g.cond_dim, len(g.edit), d.out_channels) == (256, 256, 6, 16)
    fake, features, logits = run(g, d, c, golden["images"], golden["sentence"], training=mode == "train")
    assert max_error(fake, golden[f"fake_{mode}"]) < TOL
    assert max_error(features, golden[f"D_features_{mode}"]) < TOL
    assert max_error(logits, golden[f"C_logits_{mode}"]) < TOL
    # the modes differ (batch vs running statistics), so each comparison tests its own mode
    other = "eval" if mode == "train" else "train"
    assert max_error(fake, golden[f"fake_{other}"]) > 1e-2


def test_train_py_checkpoint_with_ddp_prefixes_loads_by_path(tmp_path):
    golden = load_golden(GOLDEN)
    states = released(golden)
    # code/src/train.py's save; a DistributedDataParallel run prefixes every key with "module."
    ddp = {name: {f"module.{k}": v for k, v in state.items()} for name, state in states.items()}
    path = tmp_path / "state_epoch_600.pth"
    torch.save({"model": ddp, "optimizers": {"optimizer_G": {}, "optimizer_D": {}}, "epoch": 600}, path)
    g, d, c = DENetGenerator(2, 256, 256), DENetDiscriminator(2, 256), ConditionalHead(16, 256, 2)
    assert load_released_denet(path, g, d, c) == ["netG", "netD", "netC"]
    fake, features, logits = run(g, d, c, golden["images"], golden["sentence"], training=False)
    assert max_error(fake, golden["fake_eval"]) < TOL and max_error(logits, golden["C_logits_eval"]) < TOL
    # a bare NetG state dict (a generator-only release) loads the generator alone
    torch.save(states["netG"], tmp_path / "netG.pth")
    g2, d2, c2 = build_released_networks(tmp_path / "netG.pth")
    assert d2 is None and c2 is None
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), g2.state_dict().values(), strict=True))


def test_only_the_unused_dynamic_convolution_bias_is_dropped():
    golden = load_golden(GOLDEN)
    states = released(golden)
    g = DENetGenerator(2, 256, 256)
    load_released_denet(states, generator=g)
    ours = g.state_dict()
    dropped = [k for k in states["netG"] if k.endswith("DCBlk.conv.bias")]
    assert len(dropped) == 6 and len(ours) == len(states["netG"]) - 6
    # every released tensor (but the six) is in ours, unchanged
    loaded = sorted(v.sum().item() for k, v in states["netG"].items() if k not in dropped and v.is_floating_point())
    assert loaded == sorted(v.sum().item() for v in ours.values() if v.is_floating_point())


# ---- the text branches: the golden is at the official initialisation, where they are identities ----------------
def perturbed(golden: dict) -> dict[str, dict]:
    """The golden's weights with every tensor the official initialisation sets to a constant (the last layers of
    the text MLPs, the composition layers, the batch-norm affines) drawn at random: the text now acts."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, state in released(golden).items():
        out[name] = {}
        for k, v in state.items():
            constant = v.is_floating_point() and v.numel() > 1 and v.std() == 0
            out[name][k] = v + 0.3 * torch.randn(v.shape, generator=gen) if constant else v.clone()
    return out


def lrelu(x):
    return F.leaky_relu(x, 0.2)


def linear(sd, prefix, x):
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def batch_norm(sd, prefix, x, training):
    stats = sd[f"{prefix}.running_mean"].clone(), sd[f"{prefix}.running_var"].clone()
    return F.batch_norm(x, *stats, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training, 0.1, 1e-5)


def released_generator(sd, image, sentence, training):
    """NetG's forward (code/models/model.py, cConv2d of CCN.py) read off the released key names, the dynamic
    convolution as a loop over samples: an independent check of the key map and of the batched grouped convolution."""
    up2 = lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")  # noqa: E731
    relu_mlp = lambda prefix, x: linear(sd, f"{prefix}.linear2", F.relu(linear(sd, f"{prefix}.linear1", x)))  # noqa: E731
    lrelu_mlp = lambda prefix, x: linear(sd, f"{prefix}.linear2", lrelu(linear(sd, f"{prefix}.linear1", x)))  # noqa: E731
    h = F.conv2d(image, sd["ext.weight"], sd["ext.bias"], padding=1)
    skips = []
    for i in range(1, 7):
        skips.append(h)
        h = lrelu(batch_norm(sd, f"down{i}.bn", F.conv2d(h, sd[f"down{i}.conv.weight"], stride=2, padding=1), training))
    bottleneck, masks, m = h, [], h
    for i in range(1, 7):
        m = lrelu(F.conv2d(up2(m), sd[f"yp{i}.conv.weight"], sd[f"yp{i}.conv.bias"], padding=1)) + skips[-i]
        masks.append(m)
    img = F.conv2d(lrelu(F.conv2d(bottleneck, sd["cwp.img_enc.conv1.weight"], sd["cwp.img_enc.conv1.bias"], padding=1)),
                   sd["cwp.img_enc.conv2.weight"], sd["cwp.img_enc.conv2.bias"]).flatten(1)  # fmt: skip
    txt = lrelu_mlp("cwp.txt_enc.main", sentence)
    fused = lrelu_mlp("cwp.fuse.main", torch.cat([img, txt], 1))
    a, b = fused[:, :256], fused[:, 256:]
    code = lrelu(linear(sd, "cwp.fc.linear1", torch.cat([a - b, a * b, img, txt], 1)))
    for i in range(1, 7):
        p = f"up{i}"
        h = F.conv2d(up2(h), sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=1)
        gamma, beta = relu_mlp(f"{p}.CAFF.fc_gamma", sentence), relu_mlp(f"{p}.CAFF.fc_beta", sentence)
        h_channel = lrelu(gamma[..., None, None] * h + beta[..., None, None])
        kernel = sd[f"{p}.DCBlk.conv.weight"]  # [8, C, 3, 3]
        scales = relu_mlp(f"{p}.DCBlk.conv.scales", sentence).view(-1, *kernel.shape[:2], 1, 1)
        shifts = relu_mlp(f"{p}.DCBlk.conv.shifts", sentence).view(-1, *kernel.shape[:2], 1, 1)
        hidden = torch.cat([F.conv2d(masks[i - 1][s : s + 1], kernel * scales[s] + shifts[s], padding=1)
                            for s in range(sentence.shape[0])])  # fmt: skip
        spatial = F.conv2d(hidden, sd[f"{p}.DCBlk.conv_weight.weight"], padding=1) * h
        h_spatial = lrelu(spatial + F.conv2d(hidden, sd[f"{p}.DCBlk.conv_bias.weight"], padding=1))
        w = torch.sigmoid(linear(sd, f"{p}.fc.linear2", code))[..., None, None]
        h = w * h_channel + (1 - w) * h_spatial + skips[-i]
    return torch.tanh(F.conv2d(lrelu(h), sd["conv_img.1.weight"], sd["conv_img.1.bias"], padding=1))


def released_discriminator(sd, image, training):
    h = image
    for i in range(6):
        h = F.conv2d(h, sd[f"block{i}.conv.weight"], stride=2, padding=1)
        h = lrelu(batch_norm(sd, f"block{i}.batchnorm", h, training) if i else h)
    return h


def released_head(sd, features, sentence):
    tiled = sentence.view(-1, 256, 1, 1).repeat(1, 1, 4, 4)
    return F.conv2d(lrelu(F.conv2d(torch.cat([features, tiled], 1), sd["joint_conv.0.weight"], padding=1)),
                    sd["joint_conv.2.weight"])  # fmt: skip


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_key_map_holds_where_the_text_acts(mode):
    golden = load_golden(GOLDEN)
    # float64: with random text layers the network amplifies float32 rounding to ~1e-3 in training mode (both
    # implementations drift alike from their float64 values), so the key map is checked where rounding is ~1e-15
    states = {
        n: {k: v.double() if v.is_floating_point() else v for k, v in s.items()} for n, s in perturbed(golden).items()
    }
    g, d, c = (net.double() for net in build_released_networks(states))
    images, sentence, training = golden["images"].double(), golden["sentence"].double(), mode == "train"
    fake, features, logits = run(g, d, c, images, sentence, training)
    with torch.no_grad():
        ref_fake = released_generator(states["netG"], images, sentence, training)
        ref_features = released_discriminator(states["netD"], ref_fake, training)
        ref_logits = released_head(states["netC"], ref_features, sentence)
    assert max_error(fake, ref_fake) < 1e-10
    assert max_error(features, ref_features) < 1e-10
    assert max_error(logits, ref_logits) < 1e-10
    # the perturbation matters: the outputs left the golden's, and the text now changes the edit
    assert max_error(fake, golden[f"fake_{mode}"].double()) > 1e-2
    if not training:
        with torch.no_grad():
            assert (g(images, sentence.flip(0)) - fake).abs().mean() > 1e-3


# ---- wrong files ------------------------------------------------------------------------------------------------
def test_wrong_files_get_named_errors(tmp_path):
    golden = load_golden(GOLDEN)
    states = released(golden)
    with pytest.raises(ConfigError, match="does not exist"):
        released_state_dicts(tmp_path / "missing.pth")
    lightning = {"state_dict": {"generator.stem.weight": torch.zeros(1)}, "pytorch-lightning_version": "2.4"}
    with pytest.raises(ConfigError, match=r"not a released DE-Net checkpoint \(a Lightning checkpoint.*--ckpt_path"):
        released_state_dicts(lightning)
    # a DAMSM text encoder file (AttnGAN's text_encoder*.pth) is no NetG / NetD / NetC
    damsm = {"encoder.weight": torch.zeros(5, 300), "rnn.weight_ih_l0": torch.zeros(512, 300)}
    with pytest.raises(ConfigError, match="not a released DE-Net checkpoint.*encoder.weight"):
        load_released_denet(damsm, DENetGenerator(2, 256, 256))
    # another width: each shape mismatch is named, with the ngf / ndf to build
    with pytest.raises(ConfigError, match=r"shape mismatches \(stem.weight: \(2, 3, 3, 3\).*ngf=2, image_size=256"):
        load_released_denet(states, generator=DENetGenerator(4, 256, 256))
    with pytest.raises(ConfigError, match=r"shape mismatches.*ndf=2"):
        load_released_denet(states, discriminator=DENetDiscriminator(8, 256))
    with pytest.raises(ConfigError, match=r"shape mismatches.*ndf=2, cond_dim=256"):
        load_released_denet(states, head=ConditionalHead(16, 128, 2))
    # another image size (our toy's 32 px has two stages): named with the size to use
    with pytest.raises(ConfigError, match="built for 256 px images .6 stages., ours for 32 px.*image_size=256"):
        load_released_denet(states, generator=DENetGenerator(2, 32, 256))
    # a truncated or foreign NetG: the missing and unexpected keys are named
    truncated = {"netG": {k: v for k, v in states["netG"].items() if not k.startswith("cwp.fc.")}}
    with pytest.raises(ConfigError, match=r"missing from the checkpoint \['cwp.out.0.weight', 'cwp.out.0.bias'\]"):
        load_released_denet(truncated, generator=DENetGenerator(2, 256, 256))
    foreign = {"netG": {**states["netG"], "fc.weight": torch.zeros(1)}}  # DF-GAN's NetG has an fc from the noise
    with pytest.raises(ConfigError, match=r"unexpected keys \['fc.weight'\]"):
        load_released_denet(foreign, generator=DENetGenerator(2, 256, 256))
    # asking for a network the file lacks, strictly
    with pytest.raises(ConfigError, match=r"holds no discriminator \(NetD\); it holds \['netG'\]"):
        load_released_denet({"netG": states["netG"]}, DENetGenerator(2, 256, 256), DENetDiscriminator(2, 256))
    # nothing loads before every check has passed
    g = DENetGenerator(2, 256, 256)
    before = g.stem.weight.clone()
    with pytest.raises(ConfigError, match="shape mismatches"):
        load_released_denet(states, g, DENetDiscriminator(4, 256))
    assert torch.equal(g.stem.weight, before)


def test_denet_module_starts_from_a_released_checkpoint(tmp_path):

    from lightning_modules.editing.damsm import DAMSM, ImageEncoder, TextEncoder
    from lightning_modules.editing.module import DENet

    golden = load_golden(GOLDEN)
    damsm = DAMSM(TextEncoder("bilstm", 12, 256), ImageEncoder("resnet10t", 256, 32))
    torch.save({"model": released(golden), "epoch": 1}, tmp_path / "state_epoch_001.pth")
    model = DENet(DENetGenerator(2, 256), DENetDiscriminator(2, 256), damsm, grid_examples=0, fid=False,
                  init_from=str(tmp_path / "state_epoch_001.pth"))  # fmt: skip
    fake, _, logits = run(model.generator, model.discriminator, model.head, golden["images"], golden["sentence"], False)
    assert max_error(fake, golden["fake_eval"]) < TOL and max_error(logits, golden["C_logits_eval"]) < TOL
    with pytest.raises(ConfigError, match=r"shape mismatches.*ngf=2"):
        DENet(DENetGenerator(4, 256), DENetDiscriminator(2, 256), damsm, grid_examples=0, fid=False,
              init_from=str(tmp_path / "state_epoch_001.pth"))  # fmt: skip
