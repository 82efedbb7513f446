"""DE-Net's training losses and AttnGAN's DAMSM matching losses as pure functions (the modules call them).

DE-Net (arXiv 2206.01160) trains with DF-GAN's adversarial objective (arXiv 2008.05865: its ``L_D`` and ``L_G``, a hinge
loss with the matching-aware zero-centred gradient penalty MA-GP; equation numbers not checked here) and a DAMSM
matching term; its loss code was never released
(``../shared/papers/loupe_tel_denet.md`` section 3), so the content terms (reconstruction, keep) and every weight are
ours (docs/denet.md). The DAMSM losses follow AttnGAN (Xu et al., CVPR 2018, Eqs. 7-13) as its released
``code/miscc/losses.py`` and ``code/GlobalAttention.py`` compute them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hinge_d_loss(real: Tensor, fake: Tensor, mismatched: Tensor) -> Tensor:
    """DF-GAN's discriminator hinge loss (its ``L_D`` without MA-GP): ``relu(1 - C(x, s)) + 1/2 [relu(1 + C(G(x, t),
    t)) + relu(1 + C(x, w))]``, real-matched logits up, fake and real-mismatched down (half weight each)."""
    return F.relu(1 - real).mean() + 0.5 * (F.relu(1 + fake).mean() + F.relu(1 + mismatched).mean())


def hinge_g_loss(fake: Tensor) -> Tensor:
    """DF-GAN's generator adversarial loss (its ``L_G``): ``-E[C(G(x, t), t)]`` of the fakes' matched logits."""
    return -fake.mean()


def matching_aware_penalty(out: Tensor, image: Tensor, sentence: Tensor, power: float = 6.0) -> Tensor:
    """DF-GAN's MA-GP (the last term of its ``L_D``, without the weight ``k``): ``E[||grad_(x, s) out||_2^p]`` over
    the batch (each sample's gradient w.r.t. its image and its sentence)."""
    grads = torch.autograd.grad(out.sum(), (image, sentence), create_graph=True)
    norm = torch.cat([g.flatten(1) for g in grads], dim=1).norm(dim=1)
    return norm.pow(power).mean()


def l1_distance(edited: Tensor, source: Tensor) -> Tensor:
    """Mean absolute difference: the reconstruction term ``|G(x, s) - x|_1`` (a caption that already describes the
    image changes nothing) and the keep term ``|G(x, t) - x|_1`` (ManiGAN-style content keeping; both ours for
    DE-Net, whose loss code was not released)."""
    return (edited - source).abs().mean()


def discriminator_objective(adv: Tensor, penalty: Tensor, gp_weight: float) -> Tensor:
    """DF-GAN's ``L_D = hinge + k * MA-GP`` (``k = 2`` in its code)."""
    return adv + gp_weight * penalty


def generator_objective(adv: Tensor, damsm: Tensor, rec: Tensor, keep: Tensor, lambda_damsm: float,
                        lambda_rec: float, lambda_keep: float) -> Tensor:  # fmt: skip
    """``L_G = -C(G(x, t), t) + lambda_damsm L_DAMSM + lambda_rec |G(x, s) - x|_1 + lambda_keep |G(x, t) - x|_1``
    (DF-GAN's ``L_G`` plus AttnGAN's ``lambda L_DAMSM`` of its Eq. 3 [recall]; the content weights are ours). The
    keep term is left out of the sum when its weight is 0."""
    loss = adv + lambda_damsm * damsm + lambda_rec * rec
    return loss + lambda_keep * keep if lambda_keep > 0 else loss


def posterior_loss(scores: Tensor, class_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(images -> captions, captions -> images)``: cross-entropy of ``scores [B_img, B_txt]`` over each row and each
    column with the diagonal as targets (AttnGAN Eqs. 11-12, its ``loss0`` / ``loss1``); other pairs of a same class
    are masked."""
    if class_ids is not None:
        same = (class_ids[:, None] == class_ids[None, :]) & (class_ids[:, None] >= 0)
        same.fill_diagonal_(False)
        scores = scores.masked_fill(same, float("-inf"))
    target = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, target), F.cross_entropy(scores.t(), target)


def word_relevance(regions: Tensor, words: Tensor, mask: Tensor, gamma1: float, gamma2: float) -> Tensor:
    """``R(Q_i, D_j) = log(sum_l exp(gamma2 * cos(c_l, e_l)))`` for every image ``i`` and caption ``j``:
    ``[B_img, B_txt]`` (AttnGAN Eqs. 7-10 as ``words_loss`` / ``func_attention`` compute them: no ``1/gamma2``).

    ``regions [B, R, D]``, ``words [B, L, D]``, ``mask [B, L]`` (True on the real words of each caption).
    """
    logits = torch.einsum("ird,jld->ijrl", regions, words)  # region-word dot products (Eq. 7)
    word_mask = mask[None, :, None, :]
    attn = logits.masked_fill(~word_mask, float("-inf")).softmax(-1)  # normalised over words (Eq. 8)
    attn = (gamma1 * attn).masked_fill(~word_mask, float("-inf")).softmax(2)  # then over regions, per word (Eq. 9)
    context = torch.einsum("ijrl,ird->ijld", attn.nan_to_num(0.0), regions)
    cos = F.cosine_similarity(context, words[None].expand_as(context), dim=-1)  # [B_img, B_txt, L]
    summed = (torch.exp(gamma2 * cos) * mask[None].to(cos.dtype)).sum(-1)
    return torch.log(summed)  # Eq. 10 without the paper's 1/gamma2 exponent, as the released code


def damsm_losses(regions: Tensor, image_global: Tensor, words: Tensor, sentence: Tensor, mask: Tensor,
                 class_ids: Tensor | None = None, gamma1: float = 4.0, gamma2: float = 5.0,
                 gamma3: float = 10.0) -> dict[str, Tensor]:  # fmt: skip
    """AttnGAN's DAMSM word and sentence losses over a batch of matching pairs (Eqs. 11-13, ``words_loss`` and
    ``sent_loss``): ``word_i2t`` / ``word_t2i`` (``words_loss0`` / ``words_loss1``), ``sentence_i2t`` /
    ``sentence_t2i`` (``sent_loss0`` / ``sent_loss1``), and their sums ``word`` and ``sentence``.

    ``regions [B, R, D]`` (AttnGAN's ``img_features [B, D, 17, 17]`` flattened), ``image_global [B, D]``,
    ``words [B, L, D]`` (its ``words_emb [B, D, L]`` transposed), ``sentence [B, D]``, ``mask [B, L]`` (from
    ``cap_lens``), ``class_ids [B]`` or None.
    """
    word_i2t, word_t2i = posterior_loss(gamma3 * word_relevance(regions, words, mask, gamma1, gamma2), class_ids)
    sim = F.normalize(image_global, dim=-1) @ F.normalize(sentence, dim=-1).t()
    sentence_i2t, sentence_t2i = posterior_loss(gamma3 * sim, class_ids)
    return {
        "word": word_i2t + word_t2i,
        "sentence": sentence_i2t + sentence_t2i,
        "word_i2t": word_i2t,
        "word_t2i": word_t2i,
        "sentence_i2t": sentence_i2t,
        "sentence_t2i": sentence_t2i,
    }
