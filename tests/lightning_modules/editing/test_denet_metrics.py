"""DE-Net metrics: manipulative precision (mp and rmp) by hand, the CLIP-space metrics through a tiny random CLIP
(built from a CLIPConfig here, nothing downloads) against transformers' own CLIP forward, and FID of a set against
itself and against a shifted set."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from experiments.errors import ConfigError
from lightning_modules.editing.metrics import ClipEditScorer, ManipulativePrecision, fid_metric


def test_manipulative_precision_hand_computed():
    mp = ManipulativePrecision()
    source = torch.zeros(2, 3, 2, 2)
    edited = source.clone()
    edited[0] += 0.2  # diff 0.2
    edited[1, 0] = 0.6  # one channel of three: diff 0.2
    image = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cosines 1 and 1/sqrt(2)
    mp.update(source[:1], edited[:1], image[:1], text[:1])
    mp.update(source[1:], edited[1:], image[1:], text[1:])
    out = mp.compute()
    sim = (1 + 1 / math.sqrt(2)) / 2
    assert out["diff"].item() == pytest.approx(0.2, abs=1e-6)
    assert out["sim"].item() == pytest.approx(sim, abs=1e-6)
    assert out["mp"].item() == pytest.approx(0.8 * sim, abs=1e-6)
    # squared errors: 0.2^2 = 0.04 (every pixel), 0.6^2 / 3 = 0.12 (one channel of three): mse 0.08
    assert out["mse"].item() == pytest.approx(0.08, abs=1e-6)
    assert out["rmp"].item() == pytest.approx((1 - math.sqrt(0.08)) * sim, abs=1e-6)
    assert out["rmp"] < out["mp"]  # the root-mean-square error weighs the concentrated change of image 1 more
    with pytest.raises(ValueError, match="one shape"):
        mp.update(source, edited[:, :, :1], image, text)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    torch.manual_seed(0)
    images = torch.rand(48, 3, 32, 32)
    fid = fid_metric("resnet10t", input_size=32)
    fid.update(images, real=True)
    fid.update(images, real=False)
    same = fid.compute().item()
    fid.reset()
    fid.update(images, real=True)
    fid.update((images * 0.5 + 0.5).clamp(0, 1), real=False)
    shifted = fid.compute().item()
    assert abs(same) < 1e-2 * max(shifted, 1.0) and shifted > 100 * max(abs(same), 1e-4), (same, shifted)


def test_fid_inception_without_torch_fidelity_names_the_extra_and_the_alternative(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch_fidelity" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"fid_backbone: inception .*pip install -e '\.\[fid\]'.* inception_v3"):
        fid_metric("inception")


def test_missing_local_feature_weights_are_a_clear_error():
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrained weights '/no/such.pth' for resnet10t do not exist"):
        fid_metric("resnet10t", pretrained="/no/such.pth")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet10x'"):
        fid_metric("resnet10x")


def tiny_clip():
    """A random CLIPModel (1 layer, 16 wide, 32 px images) with the offline MiniLM tokenizer (its vocabulary)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from lightning_modules.retrieval.text import resolve_text_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model("minilm-offline"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": tokenizer.sep_token_id},
        vision_config={"image_size": 32, "patch_size": 16, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8,
    )  # fmt: skip
    return CLIPModel(config).eval(), tokenizer


def test_clip_similarity_of_edits_equals_clips_own_image_text_logits():
    model, tokenizer = tiny_clip()
    scorer = ClipEditScorer(model=model, tokenizer=tokenizer)
    torch.manual_seed(1)
    source, edited = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    texts = ["a red circle on grey", "a blue square", "a green triangle on a textured ground"]
    metric = ManipulativePrecision()
    metric.update(source, edited, scorer.encode_images(edited), scorer.encode_texts(texts))
    out = metric.compute()
    # transformers' CLIP forward: pixels normalised with OpenAI CLIP's mean / std by hand, logits = scale * cosine
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       pixel_values=(edited - mean) / std).logits_per_image  # fmt: skip
    cosines = logits.diagonal() / model.logit_scale.exp()
    assert out["sim"].item() == pytest.approx(cosines.mean().item(), abs=1e-5)
    diff = (edited - source).abs().mean().item()
    assert out["mp"].item() == pytest.approx((1 - diff) * cosines.mean().item(), abs=1e-5)
    # larger images are resized to CLIP's side first (bicubic): a 64 px copy made by nearest upsampling embeds close
    big = F.interpolate(edited, scale_factor=2, mode="nearest")
    assert F.cosine_similarity(scorer.encode_images(big), scorer.encode_images(edited)).min() > 0.9


def test_clip_scorer_loads_a_folder_offline_and_names_a_missing_model(tmp_path):
    model, tokenizer = tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    from_folder = ClipEditScorer(str(tmp_path / "clip"))
    direct = ClipEditScorer(model=model, tokenizer=tokenizer)
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(from_folder.encode_images(images), direct.encode_images(images), atol=1e-6)
    assert torch.allclose(from_folder.encode_texts(["a bird"]), direct.encode_texts(["a bird"]), atol=1e-6)
    with pytest.raises(ConfigError, match=r"cannot load CLIP '.*no_such_clip' from local files .*huggingface-cli"):
        ClipEditScorer(str(tmp_path / "no_such_clip"))


def test_denet_logs_rmp_and_the_clip_metrics(tmp_path, monkeypatch):

    from datamodules.captions import TextEditingDataModule
    from datamodules.toy.edit_scenes import write_toy_edit_scenes
    from lightning_modules.editing.damsm import DAMSM, ImageEncoder, TextEncoder
    from lightning_modules.editing.module import DENet
    from lightning_modules.editing.networks import DENetDiscriminator, DENetGenerator

    write_toy_edit_scenes(tmp_path / "toy", train=8, test=2, img_size=16)
    dm = TextEditingDataModule(root=str(tmp_path / "toy"), dataset="toy", image_size=16, val_images=0, batch_size=4,
                               num_workers=0, pin_memory=False)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    damsm = DAMSM(TextEncoder("bilstm", dm.vocab_size, 16), ImageEncoder("resnet10t", 16, 32))
    model, tokenizer = tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    denet = DENet(DENetGenerator(2, 16, 16), DENetDiscriminator(2, 16), damsm, grid_examples=0, fid=False,
                  clip_model=str(tmp_path / "clip")).eval()  # fmt: skip
    assert not any(k.startswith("clip") for k in denet.state_dict())  # CLIP stays out of the checkpoints
    with torch.no_grad():
        edited = denet._evaluate(batch, "val")
    logged = {}
    monkeypatch.setattr(denet, "log_dict", lambda values, **kwargs: logged.update(values))
    denet._log_stage("val")
    assert {"val/mp", "val/rmp", "val/mse", "val/c_sim", "val/mp_c", "val/rmp_c"} <= set(logged)
    edited01 = (edited + 1) / 2
    scorer = ClipEditScorer(model=model, tokenizer=tokenizer)
    c_sim = F.cosine_similarity(scorer.encode_images(edited01), scorer.encode_texts(batch["target_captions"])).mean()
    assert logged["val/c_sim"].item() == pytest.approx(c_sim.item(), abs=1e-5)
    rmse = ((edited01 - (batch["image"] + 1) / 2) ** 2).mean().sqrt().item()
    assert logged["val/rmp_c"].item() == pytest.approx((1 - rmse) * c_sim.item(), abs=1e-5)
    assert logged["val/rmp"].item() == pytest.approx((1 - rmse) * logged["val/sim"].item(), abs=1e-5)
