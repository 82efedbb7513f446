"""Learning-by-compression: the entropy model against analytic densities, rate / PSNR formulas, config errors,
optimisation behaviour (loss falls; more rate weight -> fewer bits) and the rate-recovery curve command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from experiments.configs import load_config
from experiments.errors import ConfigError
from lightning_modules.compression import (
    CompressionModel,
    CompressionModule,
    FactorizedEntropyModel,
    bits,
    bits_per_pixel,
)
from lightning_modules.compression.losses import rate_distortion_semantic_loss
from lightning_modules.compression.module import load_semantic_classifier, msssim_betas, psnr_from_mse

REPO = Path(__file__).resolve().parents[3]


def logistic_model(a: float, b: float) -> FactorizedEntropyModel:
    """One channel whose cumulative is exactly ``sigmoid(a y + b)`` (``filters=()``: one affine layer)."""
    model = FactorizedEntropyModel(1, filters=())
    with torch.no_grad():
        model.matrices[0].fill_(math.log(math.expm1(a)))  # softplus^-1(a)
        model.biases[0].fill_(b)
    return model.eval()


def logistic_mass(y: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return torch.sigmoid(a * (y + 0.5) + b) - torch.sigmoid(a * (y - 0.5) + b)


def test_entropy_model_bits_match_a_logistic_density():
    a, b = 0.7, -0.35
    model = logistic_model(a, b)
    values = torch.arange(-6.0, 7.0).view(1, 1, 1, -1)
    _, likelihoods = model(values, noise=False)
    expected = logistic_mass(values.double(), a, b)
    assert torch.allclose(likelihoods.double(), expected, rtol=1e-5, atol=1e-9)
    # bits of one value: -log2 p
    _, p0 = model(torch.zeros(1, 1, 1, 1), noise=False)
    assert bits(p0).item() == pytest.approx(-math.log2(logistic_mass(torch.tensor(0.0), a, b).item()), rel=1e-5)
    # total bits over a dataset = sum of per-sample -log2 p; bpp divides by the image pixels
    data = torch.tensor([0.0, 1, 1, -2, 3, 0, -1, 5]).view(2, 1, 2, 2)
    _, p = model(data, noise=False)
    per_sample = -torch.log2(logistic_mass(data.double(), a, b)).sum().item()
    assert bits(p).item() == pytest.approx(per_sample, rel=1e-5)
    assert bits_per_pixel(p, 2 * 16 * 16).item() == pytest.approx(per_sample / 512, rel=1e-5)


def test_entropy_model_far_tail_is_stable_and_bounded():
    model = logistic_model(1.0, 0.0)
    _, p = model(torch.tensor([15.0, -15.0, 1e4]).view(1, 1, 1, 3), noise=False)
    # 15 is deep in the upper tail, where float32 ``sigmoid(15.5) - sigmoid(14.5)`` loses ~20 % to cancellation;
    # the sign trick evaluates it as ``sigmoid(-14.5) - sigmoid(-15.5)``
    expected = logistic_mass(torch.tensor(15.0, dtype=torch.float64), 1.0, 0.0).item()
    assert p[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-4)
    assert p[0, 0, 0, 1].item() == pytest.approx(expected, rel=1e-4)  # symmetric lower tail
    assert p[0, 0, 0, 2].item() == pytest.approx(1e-9, rel=1e-6)  # lower bound
    assert bits(p[..., 2:]).item() == pytest.approx(-math.log2(1e-9), rel=1e-6)


def test_entropy_model_fits_a_known_discrete_distribution():
    """Minimising the expected code length ``-sum_k q_k log2 p(k)`` of a known distribution ``q`` over the
    integers (Gibbs: optimal at ``p = q``) makes the model's bits equal ``-log2 q``."""
    torch.manual_seed(0)
    support = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, -1)
    q = torch.tensor([0.05, 0.15, 0.4, 0.25, 0.1, 0.05])
    model = FactorizedEntropyModel(1, init_scale=1.0)  # the data's spread (10, for wide latents, converges slower)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(500):
        _, p = model(support, noise=False)
        loss = -(q * torch.log2(p.flatten())).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    _, p = model(support, noise=False)
    assert torch.allclose(-torch.log2(p.flatten()), -torch.log2(q), atol=0.05), (-torch.log2(p.flatten()), q)
    # a data set drawn from q: total bits = sum over samples of -log2 q, i.e. about N times the entropy
    samples = support.flatten()[torch.multinomial(q, 4096, replacement=True)].view(1, 1, 1, -1)
    _, p_data = model(samples, noise=False)
    index = (samples.flatten() + 2).long()
    assert bits(p_data).item() == pytest.approx(-torch.log2(q[index]).sum().item(), rel=0.02)
    entropy = -(q * q.log2()).sum().item()
    assert bits(p_data).item() / samples.numel() == pytest.approx(entropy, abs=0.06)


def test_psnr_and_bpp_hand_computed():
    from torchmetrics.image import PeakSignalNoiseRatio

    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    x = torch.full((2, 3, 8, 8), 0.5)
    x_hat = x + 0.1  # MSE 0.01 -> 20 dB
    metric = PeakSignalNoiseRatio(data_range=1.0)
    metric.update(x_hat, x)
    assert metric.compute().item() == pytest.approx(20.0, abs=1e-4)
    # every latent value of probability 1/2 -> 1 bit each: 2 images x 4 channels x 2x2 latents over 2x16x16 pixels
    p = torch.full((2, 4, 2, 2), 0.5)
    assert bits_per_pixel(p, 2 * 16 * 16).item() == pytest.approx(32 / 512)


def test_msssim_scales_follow_the_image_size():
    assert len(msssim_betas(224)) == 5 and len(msssim_betas(64)) == 3 and len(msssim_betas(32)) == 2
    assert sum(msssim_betas(64)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, key", [({"lambda_rate": 0.0}, "lambda_rate"), ({"lambda_rate": -1.0}, "lambda_rate"),
                    ({"lambda_sem": -0.1}, "lambda_sem"), ({"entropy_lr_scale": 0.0}, "entropy_lr_scale")],
)  # fmt: skip
def test_bad_lambda_is_a_config_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=rf"model\.init_args\.{key} .*valid range"):
        tiny(**kwargs)


def test_rate_distortion_semantic_loss_on_a_hand_case():
    """x_hat - x = 0.1 everywhere (MSE 0.01, L1 0.1); every latent value has likelihood 1/2 (1 bit): 2 images x 4 x
    2 x 2 values over 2 x 16 x 16 pixels = 1/16 bpp; two equal logits give CE ln 2."""
    x = torch.zeros(2, 3, 16, 16)
    likelihoods = torch.full((2, 4, 2, 2), 0.5)
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    terms = rate_distortion_semantic_loss(x + 0.1, x, likelihoods, lambda_rate=0.5, lambda_sem=2.0, logits=logits,
                                          target=target)  # fmt: skip
    assert terms["distortion"].item() == pytest.approx(0.01) and terms["bpp"].item() == pytest.approx(1 / 16)
    assert terms["ce"].item() == pytest.approx(math.log(2))
    assert terms["loss"].item() == pytest.approx(0.01 + 0.5 / 16 + 2 * math.log(2))
    assert terms["objective"].item() == pytest.approx(terms["loss"].item())
    probe = rate_distortion_semantic_loss(x + 0.1, x, likelihoods, lambda_rate=0.5, distortion="l1", logits=logits,
                                          target=target)  # fmt: skip
    assert probe["loss"].item() == pytest.approx(0.1 + 0.5 / 16)  # lambda_sem 0: the CE is not in the loss ...
    assert probe["objective"].item() == pytest.approx(0.1 + 0.5 / 16 + math.log(2))  # ... but trains the probe
    assert "ce" not in rate_distortion_semantic_loss(x, x, likelihoods, lambda_rate=0.5, logits=logits)


def test_the_codec_has_one_definition_and_the_module_reads_its_head_from_it():
    assert CompressionModel().num_classes is None and CompressionModel().head is None
    model = tiny(lambda_sem=0.0)
    assert model.num_classes == 4 and model.model.detach_head  # no label weight: the head is a probe
    assert not tiny(lambda_sem=0.1).model.detach_head
    with pytest.raises(
        ConfigError, match="lambda_sem > 0 needs the weak-label head: set model.init_args.net.init_args"
    ):
        tiny(lambda_sem=0.1, num_classes=None)


def test_entropy_lr_scale_moves_exactly_the_density_parameters_into_a_scaled_group():
    model = tiny(entropy_lr_scale=10.0)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr_scale": 0.5}], lr=1e-3)
    model.adjust_param_groups(optimizer)
    density = {id(p) for p in model.model.entropy.parameters()}
    scaled = [g for g in optimizer.param_groups if g["lr_scale"] == 5.0]
    assert len(scaled) == 1 and {id(p) for p in scaled[0]["params"]} == density
    rest = [id(p) for g in optimizer.param_groups if g["lr_scale"] == 0.5 for p in g["params"]]
    assert len(rest) == len(list(model.parameters())) - len(density) and not density & set(rest)
    assert tiny().lr_scales() == {}  # the default trains everything at one learning rate


NET_ARGS = {"latent_channels", "hidden_channels", "stages", "encoder", "encoder_out_index", "encoder_kwargs",
            "activation", "entropy_filters", "num_classes"}  # fmt: skip


def tiny(**kwargs) -> CompressionModule:
    """A small codec (the ``CompressionModel`` arguments among ``kwargs``) in a module (the others)."""
    net = {"latent_channels": 8, "hidden_channels": 16, "stages": 2, "num_classes": 4}
    net.update({k: v for k, v in kwargs.items() if k in NET_ARGS})
    options = {"lambda_rate": 0.01, **{k: v for k, v in kwargs.items() if k not in NET_ARGS}}
    return CompressionModule(CompressionModel(**net), **options)


@pytest.mark.parametrize("size", [30, 2])
def test_image_size_not_divisible_by_the_downsampling_factor(size):
    model = tiny()
    with pytest.raises(ConfigError, match=rf"image size {size}x{size} .*downsampling factor 4"):
        model.shared_step({"image": torch.rand(1, 3, size, size)}, noise=True)


def fixed_batch() -> dict:
    torch.manual_seed(0)
    xs = torch.linspace(0, 1, 16)
    image = torch.stack([xs.view(1, -1).expand(16, 16), xs.view(-1, 1).expand(16, 16), torch.full((16, 16), 0.3)])
    images = torch.stack([image, image.flip(-1), image.flip(-2), 1 - image])
    return {"image": images, "target": torch.tensor([0, 1, 2, 3])}


def optimise(model: CompressionModule, batch: dict, steps: int, lr: float = 5e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for i in range(steps):
        torch.manual_seed(i)  # same noise draws for every model
        loss = model.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny(lambda_sem=0.1)
    batch = fixed_batch()
    losses = optimise(model, batch, 25)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("lambda_sem", [0.0, 0.25])
def test_weak_labels_weigh_lambda_sem_in_the_loss_and_reach_the_encoder_only_when_positive(lambda_sem):
    """Eq. of the module docstring, ``L = D + lambda_rate * bpp + lambda_sem * CE(head(y_hat), label)``: the CE is
    recomputed by hand from the head's weights on the pooled quantised latent; with ``lambda_sem > 0`` the encoder's
    gradient is the rate-distortion one plus exactly ``lambda_sem`` times the CE's, with ``lambda_sem = 0`` the labels
    never reach the encoder (the head is a detached probe, trained at weight 1 outside ``loss``)."""
    torch.manual_seed(0)
    model = tiny(lambda_sem=lambda_sem).train()
    batch = fixed_batch()
    torch.manual_seed(1)  # the same noise draw for the step and the hand computation
    terms = model.shared_step(batch, noise=True)
    torch.manual_seed(1)
    y_hat = model.model(batch["image"], noise=True).y_hat
    weight, bias = model.model.head.weight, model.model.head.bias
    logits = y_hat.mean(dim=(2, 3)) @ weight.T + bias
    ce = (logits.logsumexp(dim=1) - logits[torch.arange(4), batch["target"]]).mean()
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5) and ce.item() > 0.1
    rate_distortion = terms["distortion"] + 0.01 * terms["bpp"]
    assert terms["loss"].item() == pytest.approx(rate_distortion.item() + lambda_sem * ce.item(), rel=1e-5)
    ce_weight = lambda_sem if lambda_sem > 0 else 1.0  # the optimised objective: the probe's CE at weight 1
    assert terms["objective"].item() == pytest.approx(rate_distortion.item() + ce_weight * ce.item(), rel=1e-5)

    encoder = list(model.model.encoder.parameters())
    grad_objective = torch.autograd.grad(terms["objective"], encoder, retain_graph=True)
    grad_rd = torch.autograd.grad(rate_distortion, encoder, retain_graph=True)
    grad_ce = torch.autograd.grad(terms["ce"], encoder, retain_graph=True, allow_unused=True)
    if lambda_sem > 0:
        assert sum(g.abs().sum().item() for g in grad_ce) > 1e-6  # the labels shape the code
        for g_obj, g_rd, g_ce in zip(grad_objective, grad_rd, grad_ce, strict=True):
            assert torch.allclose(g_obj, g_rd + lambda_sem * g_ce, rtol=1e-4, atol=1e-8)
    else:
        assert all(g is None for g in grad_ce)  # the CE's graph stops at the detached latent
        for g_obj, g_rd in zip(grad_objective, grad_rd, strict=True):
            assert torch.allclose(g_obj, g_rd, rtol=1e-5, atol=1e-9)
    # the head learns from the labels either way: weighted by lambda_sem in the loss, or as the probe at weight 1
    (grad_head,) = torch.autograd.grad(terms["objective"], [weight], retain_graph=True)
    (grad_head_ce,) = torch.autograd.grad(ce, [weight])
    assert grad_head.abs().sum().item() > 0
    assert torch.allclose(grad_head, ce_weight * grad_head_ce, rtol=1e-4, atol=1e-8)


def test_paper_and_toy_configs_train_with_the_weak_labels_and_the_sweep_crosses_lambda_sem():
    """Labels are weak supervision in the paper's task: both configs weigh the CE (lambda_sem > 0), and each
    config's rate-curve grid runs every lambda_rate with and without them (0 and that config's value)."""
    values = {}
    for name in ("resnet50_in1k", "toy"):
        config = load_config(REPO / "configs" / "compression" / f"{name}.yaml")
        values[name] = config["model"]["init_args"]["lambda_sem"]
        assert values[name] > 0 and config["model"]["init_args"]["net"]["init_args"]["num_classes"], name
    spaces = {"compression_lambda_rate": "toy", "compression_lambda_rate_in1k": "resnet50_in1k"}
    for space_name, config_name in spaces.items():
        space = load_config(REPO / "configs" / "sweeps" / f"{space_name}.yaml")
        assert sorted(space["model.init_args.lambda_sem"]["choices"]) == [0.0, values[config_name]], space_name
        assert len(space["model.init_args.lambda_rate"]["choices"]) == 5


def test_higher_lambda_rate_gives_lower_bpp():
    batch = fixed_batch()
    rates, distortions = {}, {}
    for lam in (1e-3, 1.0):
        torch.manual_seed(0)  # identical initial weights
        model = tiny(lambda_rate=lam)
        optimise(model, batch, 60, lr=1e-2)
        model.eval()
        with torch.no_grad():
            terms = model.shared_step(batch, noise=False)
        rates[lam], distortions[lam] = terms["bpp"].item(), terms["distortion"].item()
    assert rates[1.0] < 0.8 * rates[1e-3], rates  # measured: 0.51 vs 0.81 bpp
    assert distortions[1.0] > distortions[1e-3], distortions  # the trade-off: fewer bits, worse recovery


def test_validation_metrics_and_semantic_recovery(tmp_path):
    import lightning as L

    from lightning_modules.backbones import registered_model
    from lightning_modules.classification import ImageClassifier

    torch.manual_seed(0)
    net = {"class_path": "lightning_modules.backbones.registered_model",
           "init_args": {"name": "resnet10t", "num_classes": 4, "pretrained": "timm/not-cached.test"}}  # fmt: skip
    classifier = ImageClassifier(registered_model("resnet10t", num_classes=4), mixup_alpha=0.0, cutmix_alpha=0.0)
    ckpt = tmp_path / "cls.ckpt"
    # the hyper-parameters as a CLI run stores them: the injected network as its config
    state = {"pytorch-lightning_version": L.__version__, "state_dict": classifier.state_dict(),
             "hyper_parameters": {**dict(classifier.hparams), "net": net}}  # fmt: skip
    torch.save(state, ckpt)
    judge = load_semantic_classifier(str(ckpt))  # the hub id is not read again: the checkpoint holds the weights
    assert judge.num_classes == 4 and not judge.training and not any(p.requires_grad for p in judge.parameters())
    assert all(torch.equal(v, classifier.backbone.state_dict()[k]) for k, v in judge.state_dict().items())
    torch.save({**state, "hyper_parameters": dict(classifier.hparams)}, tmp_path / "python_built.ckpt")
    with pytest.raises(ConfigError, match="python_built.ckpt' is not a checkpoint of .*ImageClassifier"):
        load_semantic_classifier(str(tmp_path / "python_built.ckpt"))
    model = tiny(semantic_classifier=str(ckpt)).eval()
    batch = fixed_batch()
    with torch.no_grad():
        model._evaluate(batch, 0, "val")
        metrics = {k: m.compute().item() for k, m in model.metrics["val"].items()}
        x_hat = model.shared_step(batch, noise=False)["x_hat"].clamp(0, 1)
    assert set(metrics) >= {"bpp", "psnr", "ms_ssim", "weak_acc", "sem_acc_recovered", "sem_acc_original"}
    assert metrics["psnr"] == pytest.approx(psnr_from_mse(F.mse_loss(x_hat, batch["image"]).item()), rel=1e-4)
    assert "_semantic" not in dict(model.named_modules()) and not any("semantic" in k for k in model.state_dict())


def test_rate_curve_writes_png_and_tables_with_one_curve_per_lambda_sem(tmp_path):
    from experiments.__main__ import main
    from experiments.rate_curve import split_by_lambda_sem

    # "conv" is a lambda_rate x lambda_sem grid (two label weights: two curves); "resnet" has one weight: one curve
    points = {"conv": [(0.2, 24.0, 0.8, 0.0), (0.6, 28.0, 0.95, 0.0), (0.25, 23.5, 0.85, 0.004)],
              "resnet": [(0.3, 25.0, None, 0.004)]}  # fmt: skip
    for study, trials in points.items():
        for i, (bpp, psnr, rec, sem) in enumerate(trials):
            run = tmp_path / "sweeps" / study / f"trial_{i:03d}" / "version_0"
            run.mkdir(parents=True)
            val = {"val/bpp": bpp, "val/psnr": psnr}
            if rec is not None:
                val["val/semantic_recovery"] = rec
            (run / "metrics.json").write_text(json.dumps({"val": val, "test": {}, "finished": True}))
            config = f"model:\n  init_args:\n    lambda_rate: {0.01 * (i + 1)}\n    lambda_sem: {sem}\n"
            (run / "config.yaml").write_text(config)
    out = tmp_path / "figs" / "curve.png"
    code = main(["rate_curve", "--runs", str(tmp_path / "sweeps" / "conv"),
                 "--runs", f"{tmp_path / 'sweeps' / 'resnet'}=ResNet", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("label,run,lambda_rate,lambda_sem,bpp,psnr") and len(rows) == 5
    # curves in order: conv without labels (sorted by bpp), conv with lambda_sem 0.004, then ResNet (one weight)
    assert rows[1].startswith('"conv, lambda_sem=0",') and ",0.01,0.0,0.2,24.0," in rows[1]
    assert rows[2].startswith('"conv, lambda_sem=0",') and ",0.02,0.0,0.6,28.0," in rows[2]
    assert rows[3].startswith('"conv, lambda_sem=0.004",') and ",0.03,0.004,0.25,23.5," in rows[3]
    assert rows[4].startswith("ResNet,") and ",0.01,0.004,0.3,25.0," in rows[4]
    table = out.with_suffix(".md").read_text()
    assert "| ResNet |" in table and "| conv, lambda_sem=0.004 |" in table
    assert main(["rate_curve", "--runs", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    # rows without a recorded weight (older runs) stay one curve under the folder's label
    assert list(split_by_lambda_sem("old", [{"lambda_sem": None, "label": "old"}])) == ["old"]


def test_timm_encoder_sets_the_downsampling_factor():
    model = tiny(encoder="resnet10t", encoder_out_index=2)  # layer2: reduction 8
    assert model.factor == 8
    terms = model.shared_step({"image": torch.rand(2, 3, 32, 32), "target": torch.tensor([0, 1])}, noise=True)
    assert terms["x_hat"].shape == (2, 3, 32, 32) and torch.isfinite(terms["objective"])
    with pytest.raises(ConfigError, match="downsampling factor 8"):
        model.shared_step({"image": torch.rand(1, 3, 36, 36)}, noise=True)
