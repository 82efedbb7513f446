"""LOUPE's Shapley terms: cost per training step with Monte-Carlo sampling vs the neural estimator, and the estimator's
error against sampling.

    python benchmarks/loupe_shapley.py [--config configs/loupe/toy_loupe.yaml] [--ckpt RUN/checkpoints/last.ckpt]
        [--shapley-batch 8] [--fit-steps 2000] [--fit-batches 16] [--steps 4] [--reference-samples 16]
        [--budget 0.15] [--markdown docs/benchmarks.md]

1. The model and data of ``--config`` (optionally the weights of ``--ckpt``, e.g. a trained toy LOUPE run, without
   its estimators), with the Shapley terms on ``--shapley-batch`` pairs per step.
2. Every coalition of ``--fit-batches`` batches is sampled once (the config's orders), and the estimators are fitted
   on those samples with the Gaussian NLL (``--fit-steps`` full-batch AdamW steps): the data they would see over as
   many training steps, with the encoders fixed so the games do not move.
3. Timing, same batches and batch size: L_TSA + L_FSA forward and backward with every interaction sampled, then with
   the estimators (sampling only where they are not confident, plus the refresh share, at most ``--budget`` of the
   coalitions if given, else the config's ``estimator_budget``). Medians over ``--steps``.
4. Error, on held-out batches, against a reference sampled with ``--reference-samples`` orders: the config's sampled
   estimates, the estimators' means alone, and the values a training step uses (estimator where trusted, samples
   elsewhere): mean absolute error, Pearson correlation, and for the token level how often the best of a region's
   candidate boxes (the L_TSA target) is the reference's best.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from datetime import date

import torch

from datamodules.captions import CaptionsDataModule
from experiments.io import append_table_rows
from experiments.sections import build_sections
from lightning_modules.retrieval import loupe_payoffs
from lightning_modules.retrieval.loupe import LoupeRetrieval, jitter_boxes


def build(
    config: str, shapley_batch: int, ckpt: str | None, root: str | None = None
) -> tuple[LoupeRetrieval, CaptionsDataModule]:
    """The config's model (its networks built as the CLI builds them) and data, ``shapley_batch`` pairs per batch."""
    overrides = ["--model.init_args.shapley_batch", str(shapley_batch), "--data.init_args.batch_size",
                 str(shapley_batch), "--data.init_args.num_workers", "0"]  # fmt: skip
    if root is not None:
        overrides += ["--data.init_args.root", root]
    built = build_sections(config, ("model", "data"), overrides)
    model, data = built["model"], built["data"]
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        own = ("token_estimator.", "semantic_estimator.")  # fitted here from scratch
        state = {k: v for k, v in state.items() if not k.startswith(own)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        own = ("region_generator.", "token_estimator.", "semantic_estimator.")  # absent from an ITC checkpoint
        if unexpected or any(not k.startswith(own) for k in missing):
            raise ValueError(f"{ckpt} does not match {config}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    data.prepare_data()
    data.setup("fit")
    model.log = model.log_dict = lambda *a, **k: None
    return model, data


@torch.no_grad()
def encode(model: LoupeRetrieval, batch: dict) -> dict:
    image_emb, tokens = model.encode_images(batch["image"])
    text_emb, words, _, offsets = model.encode_texts(batch["captions"], offsets=True)
    return dict(tokens=tokens, text=text_emb, words=words, offsets=offsets, images=batch["image"],
                captions=batch["captions"])  # fmt: skip


def shapley_terms(model: LoupeRetrieval, enc: dict) -> tuple[torch.Tensor, dict]:
    """L_TSA + L_FSA (+ the estimators' NLL) on pre-computed encodings, as in a training step."""
    reg = model.regions(enc["tokens"])
    tsa, nll_t, share_t, _ = model.tsa_loss(reg, enc["text"], enc["images"])
    phrases, valid, _ = model.phrases(enc["captions"], enc["words"], enc["offsets"])
    fsa, nll_s, share_s = model.fsa_loss(reg["embeds"], phrases, valid)
    loss = model.tsa_weight * tsa + model.fsa_weight * fsa + model.estimator_weight * (nll_t + nll_s)
    return loss, {"token": float(share_t), "semantic": float(share_s)}


def collect_targets(model: LoupeRetrieval, batches: list[dict]) -> dict[str, list[torch.Tensor]]:
    """Sample every coalition of ``batches`` once (the config's orders) and keep (features, values, stderr) per
    level: the training data the estimators would see over as many training steps."""
    records = {"token": [], "semantic": []}
    original = loupe_payoffs.estimate_interactions  # LoupeRetrieval looks it up there at each call

    def record(features, sample, estimator, refresh_fraction, generator=None, group_size=1):
        with torch.no_grad():
            values, stderr = sample(torch.arange(features.shape[0], device=features.device))
        level = "token" if estimator is model.token_estimator else "semantic"
        records[level].append((features.detach(), values.float(), stderr.float()))
        return values, features.new_zeros(()), features.new_ones(())

    loupe_payoffs.estimate_interactions = record
    model.use_estimator = True
    try:
        for enc in batches:
            reg = model.regions(enc["tokens"])
            model.tsa_loss(reg, enc["text"], enc["images"])
            phrases, valid, _ = model.phrases(enc["captions"], enc["words"], enc["offsets"])
            model.fsa_loss(reg["embeds"], phrases, valid)
    finally:
        loupe_payoffs.estimate_interactions = original
    return records


def fit_estimators(model: LoupeRetrieval, records: dict, steps: int) -> None:
    """Gaussian-NLL fit of both estimators on the collected samples (full batch, AdamW at 1e-3), then record the
    samples' spread so the trust rule has its reference."""
    for level, estimator in (("token", model.token_estimator), ("semantic", model.semantic_estimator)):
        if estimator is None:  # the semantics-level game is computed exactly
            continue
        feats, values, stderr = (torch.cat(t) for t in zip(*records[level], strict=True))
        opt = torch.optim.AdamW(estimator.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(steps):
            opt.zero_grad()
            estimator.loss(feats, values, stderr.pow(2)).backward()
            opt.step()
        estimator.observe(values, stderr, decay=0.0)
        estimator.updates.fill_(max(estimator.warmup, len(records[level])))  # fitted on as many sampled batches


def time_terms(model: LoupeRetrieval, batches: list[dict], use_estimator: bool) -> tuple[float, dict]:
    model.use_estimator = use_estimator
    times, shares = [], []
    for enc in batches:
        start = time.perf_counter()
        loss, share = shapley_terms(model, enc)
        loss.backward()
        times.append(time.perf_counter() - start)
        shares.append(share)
    model.zero_grad(set_to_none=True)
    mean_share = {k: statistics.mean(s[k] for s in shares) for k in shares[0]}
    return statistics.median(times), mean_share


def trust_rule(model: LoupeRetrieval) -> str:
    est = model.token_estimator
    return f"max_std {est.max_std}" if est.max_std is not None else f"{est.trust_ratio} x spread of the samples"


def log(message: str) -> None:
    """Progress on stderr (the results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


@torch.no_grad()
def errors(model: LoupeRetrieval, batches: list[dict], reference_samples: int) -> dict:
    """Config sampling, estimator-only and as-trained (estimator where trusted, else sampled) errors against a
    many-sample reference, both levels, and how often each picks the reference's best candidate box."""
    names = ("ref", "mc", "est", "mix")
    out = {f"{lvl}_{k}": [] for lvl in ("tok", "sem") for k in names}
    for enc in batches:
        reg = model.regions(enc["tokens"])
        boxes = reg["boxes"]
        candidates = torch.cat(
            [boxes.unsqueeze(2), jitter_boxes(boxes, model.num_candidates, model.jitter_scale, 0.1)], 2
        )
        phrases, valid, _ = model.phrases(enc["captions"], enc["words"], enc["offsets"])
        M = model.shapley_samples
        runs = {"ref": (False, reference_samples), "mc": (False, M), "est": (True, M), "mix": (True, M)}
        for name, (use_est, samples) in runs.items():
            model.use_estimator, model.shapley_samples = use_est, samples
            ests = [e for e in (model.token_estimator, model.semantic_estimator) if e is not None]
            saved = [(e.max_std, e.budget) for e in ests] + [model.refresh_fraction]
            if name == "est":  # every coalition from the estimator
                for e in ests:
                    e.max_std, e.budget = float("inf"), None
                model.refresh_fraction = 0.0
            tok, _, _ = model.token_interactions(reg, enc["text"], candidates, enc["images"])
            sem, _, _, pairs = model.semantic_interactions(reg["embeds"], phrases, valid)
            for e, (max_std, budget) in zip(ests, saved[:-1], strict=True):
                e.max_std, e.budget = max_std, budget
            model.refresh_fraction = saved[-1]
            out[f"tok_{name}"].append(tok.flatten(0, 1))  # [B * R, C]
            out[f"sem_{name}"].append(sem[pairs])
        model.shapley_samples = M
    cat = {k: torch.cat(v).float() for k, v in out.items()}
    result = {}
    for level in ("tok", "sem"):
        ref = cat[f"{level}_ref"]
        result[level] = {"scale": float(ref.std()), "count": int(ref.numel())}
        for name in names[1:]:
            # as trained, coalitions beyond the estimator's budget that it does not trust are dropped (NaN): neither
            # sampled nor estimated, left out of the losses; the errors are over the values the losses use
            got = cat[f"{level}_{name}"]
            keep = torch.isfinite(got)
            result[level][f"{name}_kept"] = float(keep.float().mean())
            result[level][f"{name}_mae"] = float((got - ref).abs()[keep].mean()) if keep.any() else float("nan")
            result[level][f"{name}_r"] = pearson(got[keep], ref[keep])
            if level == "tok":
                rows = keep.all(-1)  # regions whose candidate boxes were all sampled or estimated
                agree = (got[rows].argmax(-1) == ref[rows].argmax(-1)).float()
                result[level][f"{name}_best"] = float(agree.mean()) if rows.any() else float("nan")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/loupe/toy_loupe.yaml")
    parser.add_argument("--ckpt", default=None, help="weights of a trained LOUPE run (else the config's init)")
    parser.add_argument("--shapley-batch", type=int, default=8)
    parser.add_argument("--fit-steps", type=int, default=2000)
    parser.add_argument("--fit-batches", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reference-samples", type=int, default=16)
    parser.add_argument("--budget", type=float, default=None, help="estimator budget (default: the config's)")
    parser.add_argument("--root", default=None, help="data root (default: the config's)")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, data = build(args.config, args.shapley_batch, args.ckpt, args.root)
    if args.budget is not None:
        for estimator in (model.token_estimator, model.semantic_estimator):
            if estimator is not None:
                estimator.budget = args.budget
    model.train()
    loader = iter(data.train_dataloader())
    fit = [encode(model, next(loader)) for _ in range(args.fit_batches)]
    timed = [encode(model, next(loader)) for _ in range(args.steps)]
    held = [encode(model, next(loader)) for _ in range(2)]
    untrained = copy.deepcopy(model)
    log(f"sampling every coalition of {args.fit_batches} batches")
    start = time.perf_counter()
    records = collect_targets(model, fit)
    sample_seconds = time.perf_counter() - start
    log(f"fitting the estimators ({args.fit_steps} steps)")
    start = time.perf_counter()
    fit_estimators(model, records, args.fit_steps)
    fit_seconds = time.perf_counter() - start
    log(f"timing {args.steps} steps: all sampled, estimator, untrained estimator")
    t_mc, share_mc = time_terms(model, timed, use_estimator=False)
    t_est, share_est = time_terms(model, timed, use_estimator=True)
    t_cold, share_cold = time_terms(untrained, timed, use_estimator=True)
    log(f"errors against a {args.reference_samples}-order reference")
    err = errors(model, held, args.reference_samples)
    m = model
    budget = model.token_estimator.budget
    setting = (
        f"{args.config}, {args.shapley_batch} pairs x {m.num_regions} regions x {1 + m.num_candidates} candidates, "
        f"{m.shapley_samples} orders, token payoff {m.token_payoff}, score {m.tsa_score}, estimator trust "
        f"{trust_rule(model)}, budget {budget if budget is not None else 'none'}, refresh {m.refresh_fraction}, "
        f"{'trained weights ' + args.ckpt if args.ckpt else 'initial weights'}, fitted on {args.fit_batches} batches"
    )
    tok, sem = err["tok"], err["sem"]
    lines = [
        f"| {date.today()} | cpu | {setting} | {t_mc * 1e3:.0f} ms | {t_est * 1e3:.0f} ms "
        f"({share_est['token']:.0%} / {share_est['semantic']:.0%} sampled) | {t_mc / t_est:.1f}x | "
        f"{t_cold * 1e3:.0f} ms | MC {tok['mc_mae']:.4f} (r {tok['mc_r']:.2f}, best {tok['mc_best']:.0%}); "
        f"estimator {tok['est_mae']:.4f} (r {tok['est_r']:.2f}, best {tok['est_best']:.0%}); as trained "
        f"{tok['mix_mae']:.4f} (r {tok['mix_r']:.2f}, best {tok['mix_best']:.0%}, kept {tok['mix_kept']:.0%}); "
        f"scale {tok['scale']:.4f} | "
        + (
            f"exact, all 2^{m.num_regions + m.max_phrases} coalitions; scale {sem['scale']:.4f} |"
            if m.semantic_exact else
            f"MC {sem['mc_mae']:.4f} (r {sem['mc_r']:.2f}); estimator {sem['est_mae']:.4f} (r {sem['est_r']:.2f}); "
            f"as trained {sem['mix_mae']:.4f} (r {sem['mix_r']:.2f}); scale {sem['scale']:.4f} |"
        )
    ]  # fmt: skip
    print(f"setting: {setting}")
    counts = {k: sum(len(r[1]) for r in v) for k, v in records.items()}
    print(f"targets sampled in {sample_seconds:.1f} s ({counts}); estimators fitted in {fit_seconds:.1f} s")
    print(f"Shapley terms per step, all sampled : {t_mc * 1e3:.1f} ms (sampled share {share_mc})")
    print(f"Shapley terms per step, estimator   : {t_est * 1e3:.1f} ms (sampled share {share_est}), "
          f"{t_mc / t_est:.1f}x cheaper")  # fmt: skip
    print(f"untrained estimator (falls back)    : {t_cold * 1e3:.1f} ms (sampled share {share_cold})")
    for level, name in (("tok", "token-level"), ("sem", "semantics-level")):
        e = err[level]
        if level == "sem" and m.semantic_exact:
            print(f"{name:16s}: exact (all 2^{m.num_regions + m.max_phrases} coalitions); std {e['scale']:.4f}")
            continue
        for kind, label in (
            ("mc", f"sampling, {m.shapley_samples} orders"),
            ("est", "estimator alone"),
            ("mix", "as trained"),
        ):
            best = f", best candidate agrees {e[kind + '_best']:.0%}" if level == "tok" else ""
            print(f"{name:16s} {label:18s}: MAE {e[kind + '_mae']:.4f} (r {e[kind + '_r']:.3f}){best}")
        print(f"{name:16s} reference std {e['scale']:.4f}; {e['count']} coalitions")
    if args.markdown:
        append_markdown_section(args.markdown, lines)
    return 0


HEADER = """## LOUPE Shapley terms: sampling vs the neural estimator (`make bench-loupe`)

`benchmarks/loupe_shapley.py`: L_TSA + L_FSA forward and backward per training step (the encoders' own cost
excluded), all interactions sampled vs the fitted estimators, same batches and batch size; then, against a 16-order
reference on held-out batches, the error of the config's sampling, of the estimator alone, and of the values a
training step uses (estimator where trusted, samples elsewhere): mean absolute error, Pearson r, the reference's std
for scale and, token level, how often the best candidate box (the L_TSA target) is the reference's. "cold" is an
untrained estimator (never confident, so it samples everything).

| date | device | setting | all sampled | estimator | speed-up | cold estimator | token-level error | semantics error |
|---|---|---|---|---|---|---|---|---|
"""


def append_markdown_section(path: str, lines: list[str]) -> None:
    """Add ``lines`` as rows at the end of this benchmark's table in ``path`` (the section is created once)."""
    append_table_rows(path, HEADER, lines)


if __name__ == "__main__":
    raise SystemExit(main())
