"""Proof of forgetting (docs/methods.md, The proof of forgetting): what an unlearning run is judged by.

Engine-free: plain tensors or arrays in, JSON-ready dicts and floats out. The caller (the unlearning driver) collects
discriminator scores, generated samples and the evaluator, and calls these before unlearning, after it, and on the
retrained federation; `with_retrain_gap` then shapes each metric as `{before, after, retrain, gap_to_retrain}`.

- Item requests: a LOGAN-style white-box membership attack (Hayes et al., "LOGAN: Membership Inference Attacks
  Against Generative Models", PoPETs 2019) against the discriminator of the site that held the items; the attack
  score is that discriminator's logit D(x), higher meaning "member". ROC AUC and TPR at a low FPR over three
  equal-size sets: F forgotten items, R retained members, N same-class non-members from the test split.
- Class requests: the forget-class rate of generated samples and FID_LeNet/KID against the retained classes only.
- Downstream utility: a fresh classifier trained on generated samples, scored on the real retained-class test set.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from scipy.stats import rankdata

from fedgan.evaluation.classifier import EVAL_BATCH_SIZE, Evaluator, train_evaluator_net
from fedgan.evaluation.metrics import fid_lenet, kid

Scores = np.ndarray | torch.Tensor | Sequence[float]
MIA_FPR = 0.01
MIA_LOW_FPR = 0.001  # needs at least 1,000 non-members to be resolved


class Predictor(Protocol):
    """What the class metrics need from an evaluator: hard labels for images (an `Evaluator` fits)."""

    def predict(self, images: torch.Tensor) -> torch.Tensor: ...


# ---- membership inference ----

def _as_scores(scores: Scores, name: str) -> np.ndarray:
    """A non-empty, finite, 1-D float64 copy of `scores` (tensors are detached and moved to the CPU)."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: got no scores, expected at least one")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: got non-finite scores (NaN or inf); a diverged discriminator cannot be attacked")
    return array


def roc_auc(positive_scores: Scores, negative_scores: Scores) -> float:
    """Exact ROC AUC = P(pos > neg) + 0.5 P(pos = neg), via the Mann-Whitney U statistic on ranks.

    Averaged ranks give tied pairs half a win, which is the same as the area under the ROC curve drawn through
    every threshold (ties included). 1 = every positive above every negative, 0.5 = chance, 0 = reversed.
    """
    positive = _as_scores(positive_scores, "positive_scores")
    negative = _as_scores(negative_scores, "negative_scores")
    ranks = rankdata(np.concatenate([positive, negative]))  # method="average": ties share their mean rank
    # U = rank sum of the positives minus the smallest possible rank sum; it counts pos > neg pairs, ties as 1/2.
    u_statistic = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u_statistic / (positive.size * negative.size))


def auc_stderr(auc: float, positives: int, negatives: int) -> float:
    """Standard error of an ROC AUC from `positives` and `negatives` scores (Hanley & McNeil 1982, the exponential
    approximation Q1 = A / (2 − A), Q2 = 2A² / (1 + A)). How far apart two AUCs must be before the sample can tell
    them apart: 64 forgotten items against 1,000 non-members give about 0.037 at 0.5. For Gaussian scores it errs
    on the safe side (about a fifth too large at AUC 0.76; tests/test_forgetting.py)."""
    if positives < 1 or negatives < 1:
        raise ValueError(f"auc_stderr: got {positives} positives and {negatives} negatives, expected at least one each")
    a = min(max(float(auc), 0.0), 1.0)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (positives * negatives)
    return float(math.sqrt(max(variance, 0.0)))


def tpr_at_fpr(positive_scores: Scores, negative_scores: Scores, fpr: float = MIA_FPR) -> float:
    """True-positive rate of the attack at a false-positive rate of at most `fpr` (Carlini et al. 2022's low-FPR view).

    Convention: "member" means a score strictly above a threshold t; t is the smallest score at which the share
    of negatives strictly above it is <= `fpr` (so the FPR bound always holds, even with ties). That t is the
    (k+1)-th largest negative score with k = floor(fpr * len(negatives)); with fpr = 1 no negative needs to be
    excluded and every positive counts. TPR = share of positives strictly above t.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr: got {fpr}, expected a share in [0, 1]")
    positive = _as_scores(positive_scores, "positive_scores")
    negative = np.sort(_as_scores(negative_scores, "negative_scores"))[::-1]  # descending
    # The epsilon keeps float products like 0.29 * 100 = 28.999... from dropping an allowed false positive.
    allowed = math.floor(fpr * negative.size + 1e-9)
    if allowed >= negative.size:
        return 1.0
    threshold = negative[allowed]
    return float(np.mean(positive > threshold))


def _count(scores: Scores) -> int:
    """How many scores `scores` holds (a tensor, array or sequence)."""
    return scores.numel() if isinstance(scores, torch.Tensor) else int(np.asarray(scores).size)


def resolvable_tpr(positive_scores: Scores, negative_scores: Scores, fpr: float) -> float | None:
    """`tpr_at_fpr`, or None when there are fewer than 1/fpr negatives.

    Below 1/fpr negatives the allowed number of false positives rounds down to zero, so the "TPR at fpr" is really
    the TPR at whatever the sample's largest negative is; None says the sample cannot resolve that operating point.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr: got {fpr}, expected a share in [0, 1]")
    # The epsilon keeps 1000 * 0.001 = 0.999... from counting as too few.
    if fpr * _count(negative_scores) < 1.0 - 1e-9:
        return None
    return tpr_at_fpr(positive_scores, negative_scores, fpr)


def membership_inference(forget_scores: Scores, member_scores: Scores, nonmember_scores: Scores) -> dict[str, Any]:
    """LOGAN-style white-box attack summary (docs/methods.md, The proof of forgetting):
    AUCs and TPR at 1 % and 0.1 % FPR from D(x) logits (None where the non-members cannot resolve that FPR), and
    the standard error of AUC(F vs N) (`auc_stderr`: what a gap between two such AUCs must exceed to mean anything).

    `forget_scores` (F), `member_scores` (R) and `nonmember_scores` (N) are the requesting site's discriminator
    logits on its forgotten items, on retained items of its shard, and on test-split items of the same classes.
    Read AUC(R vs N) first: near 0.5 means the attack has no power and AUC(F vs N) proves nothing.
    After unlearning, AUC(F vs N) should reach retrain's value.
    """
    forget = _as_scores(forget_scores, "forget_scores")
    member = _as_scores(member_scores, "member_scores")
    nonmember = _as_scores(nonmember_scores, "nonmember_scores")
    auc_forget = roc_auc(forget, nonmember)
    return {
        "mia_auc_forget_vs_nonmember": auc_forget,
        "mia_auc_forget_vs_nonmember_stderr": auc_stderr(auc_forget, forget.size, nonmember.size),
        "mia_auc_member_vs_nonmember": roc_auc(member, nonmember),
        "mia_auc_forget_vs_member": roc_auc(forget, member),
        "mia_tpr_at_1pct_fpr_forget": resolvable_tpr(forget, nonmember, MIA_FPR),
        "mia_tpr_at_1pct_fpr_member": resolvable_tpr(member, nonmember, MIA_FPR),
        "mia_tpr_at_0.1pct_fpr_forget": resolvable_tpr(forget, nonmember, MIA_LOW_FPR),
        "mia_tpr_at_0.1pct_fpr_member": resolvable_tpr(member, nonmember, MIA_LOW_FPR),
        "mia_sizes": {"forget": int(forget.size), "member": int(member.size), "nonmember": int(nonmember.size)},
    }


# ---- class forgetting ----

def forget_class_rate(evaluator: Predictor, fake_images: torch.Tensor, forget_classes: Sequence[int]) -> float:
    """Share of generated samples the evaluator classifies into any forgotten class (issue 8, section 4).

    Compare it with retrain's rate, not with zero: the evaluator's own confusion between classes sets the floor
    (docs/methods.md, Cascaded GAN unlearning).
    """
    if len(fake_images) == 0:
        raise ValueError("fake_images: got no samples, expected at least one")
    predictions = evaluator.predict(fake_images).cpu()
    forgotten = torch.as_tensor(list(forget_classes), dtype=predictions.dtype)
    return float(torch.isin(predictions, forgotten).double().mean())


def retained_fid(
    evaluator: Evaluator,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    fake_images: torch.Tensor,
    retained_classes: Sequence[int],
    *,
    kid_subset_size: int = 1000,
) -> dict[str, float | int]:
    """FID_LeNet and KID of generated samples against the real (test) images of the retained classes only.

    Keys `fid_lenet_retained`, `kid_retained`, `kid_retained_std`, `retained_fid_fake_count`. The retained-class
    reference is what "quality on what is kept" means after a class request; leftover forgotten-class samples
    then count against the generator.
    """
    retained = torch.as_tensor(list(retained_classes), dtype=torch.int64)
    real_kept = real_images[torch.isin(real_labels.cpu().to(torch.int64), retained).to(real_images.device)]
    fake_kept = fake_images
    kid_mean, kid_std = kid(evaluator, real_kept, fake_kept, subset_size=kid_subset_size)
    return {
        "fid_lenet_retained": fid_lenet(evaluator, real_kept, fake_kept),
        "kid_retained": kid_mean,
        "kid_retained_std": kid_std,
        "retained_fid_fake_count": len(fake_kept),
    }


# ---- downstream utility ----

def pseudo_label(evaluator: Predictor, images: torch.Tensor) -> torch.Tensor:
    """Evaluator predictions (int64, N) used as labels for samples of an unconditional generator.

    An unconditional G has no labels to train a downstream classifier with; the evaluator's labels stand in, so the
    downstream accuracy then measures how much class-distinguishing content the samples carry as the evaluator sees
    it. The proof of forgetting pseudo-labels a conditional G's samples too, so both kinds are measured alike.
    """
    return evaluator.predict(images).cpu().to(torch.int64)


def _check_labelled(images: torch.Tensor, labels: torch.Tensor, num_classes: int, name: str) -> None:
    """ValueError for an empty split, mismatched label count or a label outside [0, num_classes)."""
    if len(images) == 0:
        raise ValueError(f"{name}_images: got no images, expected at least one")
    if labels.shape != (len(images),):
        raise ValueError(f"{name}_labels: got shape {tuple(labels.shape)}, expected ({len(images)},)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name}_labels: label out of range, expected labels in [0, {num_classes})")


@torch.no_grad()
def _accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    """Share of `images` whose argmax logit equals the label (net in eval mode, batched)."""
    net.eval()
    correct = 0
    for x, y in zip(images.split(EVAL_BATCH_SIZE), labels.split(EVAL_BATCH_SIZE), strict=True):
        correct += int((net(x.to(device, torch.float32)).argmax(dim=1).cpu() == y.cpu()).sum())
    return correct / len(labels)


def downstream_accuracy(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    classes: Sequence[int] | None = None,
    epochs: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """Downstream utility (Sun et al. 2023's "downstream classification"; issue 8, section 4).

    Trains a fresh `EvaluatorNet` (same recipe as the evaluator, `epochs` epochs, deterministic given `seed` on the
    CPU) on generated images and their labels (generation labels, or `pseudo_label` for an unconditional G), then
    returns its accuracy on the real test images whose label is in `classes` (all test images when None). The
    classifier keeps all `num_classes` outputs, so a retained-class test image misread as a forgotten class counts
    as an error.
    """
    train_labels = train_labels.cpu().to(torch.int64)
    test_labels = test_labels.cpu().to(torch.int64)
    _check_labelled(train_images, train_labels, num_classes, "train")
    _check_labelled(test_images, test_labels, num_classes, "test")
    if classes is not None:
        keep = torch.isin(test_labels, torch.as_tensor(list(classes), dtype=torch.int64))
        if not keep.any():
            raise ValueError(f"classes: got {list(classes)}, none of which occurs in test_labels")
        test_images, test_labels = test_images[keep.to(test_images.device)], test_labels[keep]
    device = torch.device(device)
    net = train_evaluator_net(train_images.float(), train_labels, num_classes, seed=seed, epochs=epochs, device=device)
    return _accuracy(net, test_images, test_labels, device)


# ---- certificate shape ----

def _gap(after: Any, retrain: Any) -> Any:
    """after - retrain for numbers, elementwise for equal-length lists of numbers (histograms), else None."""
    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if is_number(after) and is_number(retrain):
        return after - retrain
    if isinstance(after, list | tuple) and isinstance(retrain, list | tuple) and len(after) == len(retrain):
        if all(is_number(a) and is_number(r) for a, r in zip(after, retrain, strict=True)):
            return [a - r for a, r in zip(after, retrain, strict=True)]
    return None


def with_retrain_gap(
    before: Mapping[str, Any], after: Mapping[str, Any], retrain: Mapping[str, Any], keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Each metric as `{before, after, retrain, gap_to_retrain}` (the certificate fields of issue 8, section 4).

    Retraining from scratch is the gold standard (docs/methods.md, The proof of forgetting), so the gap is
    `after - retrain`.
    A key missing from all three is skipped; a side that lacks it reads None, and so does a gap it makes
    incomputable.
    """
    shaped: dict[str, dict[str, Any]] = {}
    for key in keys:
        if key not in before and key not in after and key not in retrain:
            continue
        b, a, r = before.get(key), after.get(key), retrain.get(key)
        shaped[key] = {"before": b, "after": a, "retrain": r, "gap_to_retrain": _gap(a, r)}
    return shaped
