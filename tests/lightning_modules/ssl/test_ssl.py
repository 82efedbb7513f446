"""BYOL / E-DIY (lightning_modules/ssl): the loss formulas, the EMA and its schedule, the region terms, one training
step of each module and the config checks."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from datamodules.transforms import BYOLTwoViewTransform
from experiments.errors import ConfigError
from lightning_modules.backbones import registered_model
from lightning_modules.ema import ema_update
from lightning_modules.optim import OptimConfig
from lightning_modules.ssl import BYOLModule, EDIYModule
from lightning_modules.ssl.byol import MLPHead, cosine_momentum
from lightning_modules.ssl.ediy import DenseHead, region_collapse
from lightning_modules.ssl.losses import (
    byol_loss,
    diversity_loss,
    ediy_loss,
    invariance_loss,
    match_most_similar,
    symmetrised_byol_loss,
)


def tiny_networks(dense: bool = False, proj_dim: int = 16, pred_dim: int = 16) -> dict:
    """A tiny ResNet-18 backbone and the heads as a config would inject them (heads take their input width)."""
    kwargs = {"channels": [8, 8, 16, 16], "stem_width": 8, "output_stride": 16}
    networks = dict(backbone=registered_model("resnet18", num_classes=0, kwargs=kwargs),
                    projector=partial(MLPHead, hidden_dim=32, out_dim=proj_dim),
                    predictor=partial(MLPHead, hidden_dim=32, out_dim=pred_dim))  # fmt: skip
    if dense:
        networks.update(dense_projector=partial(DenseHead, hidden_dim=32, out_dim=16),
                        dense_predictor=partial(DenseHead, hidden_dim=32, out_dim=16))  # fmt: skip
    return networks


def tiny(cls, **kwargs):
    return cls(**tiny_networks(dense=cls is EDIYModule), log_views=False, **kwargs)


def offdiag_stats(r: torch.Tensor) -> dict:
    sim = F.normalize(r, dim=-1) @ F.normalize(r, dim=-1).transpose(1, 2)
    eye = torch.eye(r.shape[1], dtype=torch.bool)
    return {"max": sim.masked_fill(eye, -2).amax().item(), "min": sim.masked_fill(eye, 2).amin().item(),
            "mean_least": sim.masked_fill(eye, 2).amin(-1).mean().item(),
            "mean_most": sim.masked_fill(eye, -2).amax(-1).mean().item()}  # fmt: skip


def optimise(loss_fn, r0: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    r = r0.clone().requires_grad_()
    opt = torch.optim.SGD([r], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(r).backward()
        opt.step()
    return r.detach()


@pytest.fixture
def collapsed_regions():
    """Two images x 16 regions x 32-d, all near one direction per image (region collapse: similarities ~0.9)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 32, generator=g) + 0.3 * torch.randn(2, 16, 32, generator=g)


def test_byol_loss_is_two_minus_two_cos_on_a_hand_case():
    p, z = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 3.0]])  # 45 degrees apart
    assert byol_loss(p, z).item() == pytest.approx(2 - 2 * 2**-0.5)
    assert byol_loss(p, 5 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0)


def test_symmetrised_byol_and_ediy_totals_on_a_hand_case():
    """Each view's prediction against the other view's target: p1 = (1, 0) vs z2 = (0, 1) is 90 degrees (L = 2),
    p2 = (1, 1) vs z1 = (1, 1) is 0 degrees (L = 0); the swapped pairing would give 2 - 2 cos 45 twice."""
    p1, p2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    z1, z2 = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    assert symmetrised_byol_loss(p1, p2, z1, z2).item() == pytest.approx(2.0, abs=1e-6)
    total = ediy_loss(torch.tensor(2.0), torch.tensor(-0.5), torch.tensor(0.25), lambda_div=2.0, lambda_inv=4.0)
    assert total.item() == pytest.approx(2.0 - 1.0 + 1.0)


def test_heads_are_built_from_the_width_that_feeds_them():
    model = tiny(EDIYModule)
    assert model.backbone.num_features == 16
    assert model.projector[0].in_features == 16 and model.predictor[0].in_features == model.projector.out_dim == 16
    assert model.dense_projector[0].in_channels == 16 and model.dense_predictor[0].in_channels == 16
    assert "backbone" not in model.hparams and model.hparams["lambda_div"] == 1.0  # built in Python: no module stored
    with pytest.raises(
        ConfigError, match=r"predictor.init_args.out_dim \(8\) must equal the projector's out_dim \(16\)"
    ):
        BYOLModule(**tiny_networks(pred_dim=8))


def test_cosine_momentum_endpoints_and_midpoint():
    assert cosine_momentum(0, 1000) == pytest.approx(0.996)
    assert cosine_momentum(1000, 1000) == pytest.approx(1.0)
    assert cosine_momentum(500, 1000) == pytest.approx(0.998)
    ms = [cosine_momentum(k, 100) for k in range(101)]
    assert all(b >= a for a, b in zip(ms, ms[1:], strict=False))


def test_ema_update_matches_its_formula():
    torch.manual_seed(0)
    online, target = (
        nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)),
        nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)),
    )
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, t0, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o)


def test_diversity_term_default_is_the_abstracts_reading_on_a_hand_case():
    """Three regions of one view: r0 = (1, 0), r1 = (1, 1), r2 = (0, -2), so S01 = 1/sqrt(2), S02 = 0,
    S12 = -1/sqrt(2). The default term (``least_similar``: each region's similarity to the region of its view it is
    least similar to) is (S02 + S12 + S21) / 3 = -sqrt(2) / 3; the ``most_similar`` ablation is
    (S01 + S10 + S02) / 3 = sqrt(2) / 3. The gradient on r0 comes only from its own least similar pair (r0 is no other
    region's least similar partner): d/dr0 [cos(r0, r2) / 3] = (r2 / |r2| - S02 r0 / |r0|) / (3 |r0|) = (0, -1/3),
    so a descent step moves r0 towards (0, 1), away from r2."""
    r = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]], requires_grad=True)
    loss = diversity_loss(r)
    assert loss.item() == pytest.approx(-(2**0.5) / 3, abs=1e-6)
    assert diversity_loss(r, partner="least_similar").item() == pytest.approx(-(2**0.5) / 3, abs=1e-6)
    assert diversity_loss(r, partner="most_similar").item() == pytest.approx(2**0.5 / 3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(r.grad[0, 0], torch.tensor([0.0, -1 / 3]))
    assert tiny(EDIYModule).div_partner == "least_similar"


def test_diversity_gradient_moves_each_region_away_from_its_least_similar_partner(collapsed_regions):
    """What the abstract says the term does ("pushing the most different regions inside each augmented view away"):
    on a fixed collapsed view, one descent step on the default term lowers, for EVERY region i of both images, its
    similarity to its least similar region j*(i) = argmin_{j != i} S_ij of the view. A few more steps keep lowering
    those similarities and the region collapse; optimised to the end the term reaches its floor (-1) with two
    antipodal clusters, whose members are near-identical (the most similar pair ends closer than it started)."""
    r0 = collapsed_regions
    start = offdiag_stats(r0)
    assert start["min"] > 0.5  # a collapsed input
    n = r0.shape[1]
    sim0 = F.normalize(r0, dim=-1) @ F.normalize(r0, dim=-1).transpose(1, 2)
    partner = sim0.masked_fill(torch.eye(n, dtype=torch.bool), 2.0).argmin(-1)  # [B, N]
    torch.testing.assert_close(diversity_loss(r0), sim0.gather(2, partner[..., None]).mean())  # mean_i min_j S_ij
    r1 = optimise(diversity_loss, r0, steps=1, lr=5.0)
    sim1 = F.normalize(r1, dim=-1) @ F.normalize(r1, dim=-1).transpose(1, 2)
    fall = (sim0 - sim1).gather(2, partner[..., None])[..., 0]
    assert (fall > 1e-4).all(), fall  # measured: 0.0018 to 0.013 at lr 5
    short = optimise(diversity_loss, r0, steps=30, lr=20.0)
    assert offdiag_stats(short)["mean_least"] < start["mean_least"] - 0.3
    assert offdiag_stats(short)["min"] < start["min"]
    assert region_collapse(short.transpose(1, 2)[..., None]) < region_collapse(r0.transpose(1, 2)[..., None])
    long = offdiag_stats(optimise(diversity_loss, r0, steps=400, lr=50.0))
    assert long["mean_least"] < -0.95  # the floor: every region has an (almost) antipodal partner
    assert long["max"] > start["max"]  # ... and the most similar pair got closer, not further apart


def test_most_similar_ablation_lowers_the_maximum_intra_view_region_similarity(collapsed_regions):
    """The ablation (``div_partner: most_similar``, every region pushed from its nearest neighbour in the view),
    optimised on a fixed collapsed input, lowers the largest intra-view similarity, every region's nearest-neighbour
    similarity and the overall region collapse."""

    def most(r):
        return diversity_loss(r, partner="most_similar")

    r0 = collapsed_regions
    start = offdiag_stats(r0)
    r = optimise(most, r0, steps=200, lr=20.0)
    after = offdiag_stats(r)
    assert after["max"] < start["max"] - 0.2
    assert after["mean_most"] < start["mean_most"] - 0.2
    assert region_collapse(r.transpose(1, 2)[..., None]) < region_collapse(r0.transpose(1, 2)[..., None]) - 0.3
    torch.testing.assert_close(most(r0), torch.tensor(start["mean_most"]))  # k = 1: mean_i max_j S_ij


def test_diversity_loss_top_k_and_validation():
    r = torch.randn(3, 9, 8)
    sim = F.normalize(r, dim=-1) @ F.normalize(r, dim=-1).transpose(1, 2)
    sim = sim.masked_fill(torch.eye(9, dtype=torch.bool), float("inf"))
    torch.testing.assert_close(diversity_loss(r, top_k=3), sim.sort(-1).values[..., :3].mean())
    sim = sim.masked_fill(torch.eye(9, dtype=torch.bool), -float("inf"))
    expected = sim.sort(-1, descending=True).values[..., :3].mean()
    torch.testing.assert_close(diversity_loss(r, top_k=3, partner="most_similar"), expected)
    with pytest.raises(ConfigError, match="div_top_k"):
        diversity_loss(r, top_k=9)
    with pytest.raises(ConfigError, match="div_partner must be least_similar or most_similar, got 'nearest'"):
        diversity_loss(r, partner="nearest")


def test_match_most_similar_agrees_with_a_python_loop_and_the_loss_uses_it():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 6, 5, generator=g), torch.randn(2, 7, 5, generator=g)
    idx = match_most_similar(a, b)
    for bi in range(2):
        for i in range(6):
            sims = [F.cosine_similarity(a[bi, i], b[bi, j], dim=0).item() for j in range(7)]
            assert idx[bi, i].item() == max(range(7), key=lambda j: sims[j])
    expected = sum(2 - 2 * F.cosine_similarity(a[bi, i], b[bi, idx[bi, i]], dim=0) for bi in range(2) for i in range(6))
    torch.testing.assert_close(invariance_loss(a, b), expected / 12)


def test_region_collapse_is_one_for_identical_regions():
    fmap = torch.randn(2, 8, 1, 1).expand(2, 8, 3, 3)
    assert region_collapse(fmap).item() == pytest.approx(1.0, abs=1e-5)


def test_bad_lambda_names_the_key():
    with pytest.raises(ConfigError, match="lambda_div"):
        tiny(EDIYModule, lambda_div=-0.5)
    with pytest.raises(ConfigError, match="lambda_inv"):
        tiny(EDIYModule, lambda_inv=float("nan"))
    with pytest.raises(ConfigError, match="div_partner must be least_similar or most_similar, got 'nearest'"):
        tiny(EDIYModule, div_partner="nearest")


def test_two_view_transform_gives_two_different_views():
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    out = BYOLTwoViewTransform(img_size=32, image_transform=lambda im: torch.zeros(3, 32, 32))(image)
    assert out["views"].shape == (2, 3, 32, 32) and out["image"].shape == (3, 32, 32)
    assert not torch.equal(out["views"][0], out["views"][1])
    assert BYOLTwoViewTransform(img_size=224).blur_kernel == 23


class ViewsData(L.LightningDataModule):
    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        views = torch.randn(self.batch_size, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        return DataLoader([{"views": v} for v in views], batch_size=self.batch_size)


@pytest.mark.parametrize("cls", [BYOLModule, EDIYModule], ids=["byol", "ediy"])
def test_one_training_step_moves_the_target_by_the_ema(cls):
    torch.manual_seed(0)
    optim = OptimConfig(name="lars", base_lr=0.2, weight_decay=1.5e-6, warmup_steps=0, min_lr=0.0, no_weight_decay=[])
    model = tiny(cls, optim=optim)
    targets = [t for t, _ in model.online_pairs()]
    for t in targets:  # start the target away from the online weights so the EMA is visible
        for p in t.parameters():
            p.data.add_(0.1)
    before = [p.detach().clone() for t in targets for p in t.parameters()]
    online_before = [p.detach().clone() for _, online in model.online_pairs() for p in online.parameters()]
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=ViewsData())
    m = cosine_momentum(0, 1, 0.996)
    assert model.momentum == pytest.approx(m)
    online_after = [p.detach() for _, online in model.online_pairs() for p in online.parameters()]
    after = [p.detach() for t in targets for p in t.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(online_before, online_after, strict=True))  # the step happened
    for t0, t1, o in zip(before, after, online_after, strict=True):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * o)
    assert any(k.startswith("backbone.") for k in model.state_dict())
    if cls is EDIYModule:
        terms = model.shared_step({"views": torch.randn(2, 2, 3, 32, 32)})
        assert {"loss_byol", "loss_div", "loss_inv"} <= terms.keys()
        total = terms["loss_byol"] + terms["loss_div"] + terms["loss_inv"]
        torch.testing.assert_close(terms["loss"], total)


# ------------------------------------------------------------------------------------------- toy learning (~1 min)

SMALL = [
    "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "10", "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "32",
    "--data.init_args.toy_train_per_class", "40", "--data.init_args.toy_eval_per_class", "8",
    "--model.init_args.backbone.init_args.kwargs", "{channels: [16, 32, 64, 128], stem_width: 16, output_stride: 16}",
    "--model.init_args.projector.init_args.hidden_dim", "128",
    "--model.init_args.predictor.init_args.hidden_dim", "128",
    "--model.init_args.projector.init_args.out_dim", "64",
]  # fmt: skip


def test_toy_ediy_keeps_regions_more_diverse_than_byol(tmp_path):
    """The paper's claim in miniature: after the same 30 steps on the same toy images (64 px shapes, same seed), the
    backbone's C5 cells of an E-DIY model (the abstract's ``least_similar`` diversity term, toy_ediy.yaml) are less
    alike (``val/region_collapse``, the mean cosine similarity between different cells of an image) than a BYOL
    model's; both runs' losses are finite and the region terms are logged."""
    import json

    from experiments.cli import main as cli_main

    common = ["--runs_dir", str(tmp_path / "runs"), "--data.init_args.root", str(tmp_path / "shapes"), *SMALL]
    cli_main(["fit", "--config", "configs/ediy/toy_byol.yaml", *common, "--run_name", "byol"])
    cli_main(["fit", "--config", "configs/ediy/toy_ediy.yaml", *common, "--run_name", "ediy",
              "--model.init_args.dense_projector.init_args.hidden_dim", "128",
              "--model.init_args.dense_predictor.init_args.hidden_dim", "128",
              "--model.init_args.dense_projector.init_args.out_dim", "64"])  # fmt: skip
    byol, ediy = (
        json.loads(next((tmp_path / "runs" / name).glob("version_*/metrics.json")).read_text())["val"]
        for name in ("byol", "ediy")
    )
    print(f"region collapse: BYOL {byol['val/region_collapse']:.3f}, E-DIY {ediy['val/region_collapse']:.3f}")
    assert all(torch.isfinite(torch.tensor(v)) for v in [*byol.values(), *ediy.values()])
    assert {"val/loss_div", "val/loss_inv"} <= ediy.keys()
    assert ediy["val/region_collapse"] < byol["val/region_collapse"] - 0.03  # least_similar, seed 0: 0.450 vs 0.521
