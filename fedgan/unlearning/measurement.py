"""Measuring a federation for a forget certificate: what its generator makes, and what the requesting D remembers.

The same measurement runs before unlearning, after each method and after retrain (docs/methods.md, "Proof of
forgetting"): the class histogram of G's samples and, for class requests, the forget-class rate; FID_LeNet / KID
against the test images of the retained classes; a downstream classifier trained on G's samples; and for item
requests a LOGAN-style white-box membership attack on the requesting site's discriminator (its logits on
forgotten items F, retained members R and test non-members N, through the measurement-only `query_logits`).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteEngine, SiteIds, site_positions
from fedgan.evaluation.classifier import Evaluator
from fedgan.evaluation.forgetting import (
    downstream_accuracy,
    forget_class_rate,
    membership_inference,
    pseudo_label,
    retained_fid,
)
from fedgan.evaluation.lira import lira_attack, train_references
from fedgan.evaluation.metrics import class_histogram
from fedgan.federation import GeneratorServer
from fedgan.forget import Resolution
from fedgan.models import build_discriminator
from fedgan.scenario import Scenario
from fedgan.seeding import derive_seed, torch_generator

CERTIFICATE_DRAW = "certificate"  # the seed tag of the certificate's latent draws
SHARE_SNAPSHOT_TAG = "share-snapshots"  # the engine snapshot the later share snapshots start from and return to
LIRA_FAKE_SAMPLES = 2048  # G's samples the reference discriminators are trained against


def share_stderr(histogram: list[float], count: int) -> float:
    """The largest standard error of a class share estimated from `count` samples: max_c sqrt(p_c (1 - p_c) / n)."""
    shares = np.asarray(histogram, dtype=np.float64)
    return float(np.sqrt(shares * (1.0 - shares) / max(count, 1)).max())


def forgotten_at(resolution: Resolution, forgotten_before: SiteIds, site: int) -> np.ndarray:
    """Every id `site` has forgotten or is forgetting now: this request's items and every earlier request's."""
    return np.concatenate([np.asarray(resolution.forget_ids[site], dtype=np.int64),
                           np.asarray(forgotten_before.get(site, []), dtype=np.int64)])


class ForgettingProbe:
    """Every metric of a certificate, for the federation as it stands."""

    def __init__(self, scenario: Scenario, splits: DatasetSplits, evaluator: Evaluator) -> None:
        self.scenario = scenario
        self.config = scenario.unlearning
        self.splits = splits
        self.evaluator = evaluator
        train = splits.train
        order = np.argsort(train.ids.numpy())
        self._sorted_ids, self._order = train.ids.numpy()[order], order

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Labels of training items given by global id."""
        return self.splits.train.labels.numpy()[self._positions(ids)]

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        return self._order[np.searchsorted(self._sorted_ids, np.asarray(ids, dtype=np.int64))]

    def measure(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], tag: str,
                retained_classes: list[int], forgotten_before: SiteIds | None = None) -> dict[int, dict[str, Any]]:
        """Every request's metrics (request index -> metrics): G's samples, and the requesting site's D.
        `forgotten_before`: ids earlier requests forgot, kept out of the attack's retained members."""
        c = self.config
        # One latent draw for every measurement (`tag` names the measurement, not its draw): before, each method
        # and retrain are compared on the same z, so a gap between them is the models', not the sampling's.
        fake = server.sample(c.eval_samples, CERTIFICATE_DRAW)
        histogram = class_histogram(self.evaluator, fake, self.splits.train.num_classes)
        shared: dict[str, Any] = {"class_histogram": histogram,
                                  "class_share_stderr": share_stderr(histogram, len(fake))}
        shared.update(self._generator_metrics(server, fake, retained_classes))
        later = self._later_histograms(server, engine) if c.share_snapshots > 1 else []
        if later:  # the shares' mean over the snapshots; the end-of-side snapshot kept beside it
            shared["class_histogram_single"] = histogram
            shared["class_histogram"] = np.mean([histogram, *later], axis=0).tolist()
            shared["class_share_snapshots"] = 1 + len(later)
            # how far the shares move between snapshots: the largest standard deviation of a class share
            shared["class_share_snapshot_sd"] = float(np.std([histogram, *later], axis=0, ddof=1).max())
        out: dict[int, dict[str, Any]] = {}
        for index, resolution in enumerate(batch):
            metrics = dict(shared)
            if resolution.forget_classes:
                metrics["forget_class_rate"] = forget_class_rate(self.evaluator, fake, resolution.forget_classes)
                if later:
                    metrics["forget_class_rate_single"] = metrics["forget_class_rate"]
                    rates = [sum(h[k] for k in resolution.forget_classes) for h in (histogram, *later)]
                    metrics["forget_class_rate"] = float(np.mean(rates))
                    metrics["forget_class_rate_snapshot_sd"] = float(np.std(rates, ddof=1))
                if server.conditional:
                    metrics.update(self._conditional_rates(server, resolution.forget_classes, retained_classes))
            if resolution.request.kind == "items" and self.config.membership_attack:
                metrics.update(self._membership(engine, server, resolution, index, forgotten_before or {}))
            out[index] = metrics
        return out

    def _later_histograms(self, server: GeneratorServer, engine: SiteEngine) -> list[list[float]]:
        """The class shares of `share-snapshots` − 1 later snapshots: the federation continued by `share-spacing`
        plain UA rounds before each, on the same latent draw; then the server and every site return to where they
        were, so the measurement changes nothing."""
        c = self.config
        saved = copy.deepcopy(server.state_dict())
        engine.snapshot(SHARE_SNAPSHOT_TAG)
        try:
            histograms = []
            for _ in range(c.share_snapshots - 1):
                for _ in range(c.share_spacing):
                    server.step(engine)
                fake = server.sample(c.eval_samples, CERTIFICATE_DRAW)
                histograms.append(class_histogram(self.evaluator, fake, self.splits.train.num_classes))
            return histograms
        finally:
            engine.restore(SHARE_SNAPSHOT_TAG)
            engine.discard(SHARE_SNAPSHOT_TAG)
            server.load_state_dict(saved)

    def _conditional_rates(self, server: GeneratorServer, forget_classes: tuple[int, ...], retained: list[int]
                           ) -> dict[str, float]:
        """A conditional G's forgotten class, asked for and not (label masking alone is not forgetting):
        `forget_class_rate_unasked` — share of samples in a forgotten class when G is asked only for retained
        classes (uniformly); `forget_class_rate_asked` — share still in a forgotten class when asked for one."""
        count = self.config.eval_samples
        rng = np.random.default_rng(0)  # the same labels for every measurement of the batch
        unasked = torch.from_numpy(rng.choice(np.asarray(retained, dtype=np.int64), size=count))
        asked = torch.from_numpy(rng.choice(np.asarray(forget_classes, dtype=np.int64), size=count))
        return {
            "forget_class_rate_unasked": forget_class_rate(
                self.evaluator, server.sample(count, f"{CERTIFICATE_DRAW}-unasked", unasked), forget_classes),
            "forget_class_rate_asked": forget_class_rate(
                self.evaluator, server.sample(count, f"{CERTIFICATE_DRAW}-asked", asked), forget_classes),
        }

    def _generator_metrics(self, server: GeneratorServer, fake: torch.Tensor, retained: list[int]
                           ) -> dict[str, Any]:
        """Quality of G on what the federation still holds: FID/KID against those classes, downstream accuracy."""
        test = self.splits.test
        num_classes = self.splits.train.num_classes
        metrics: dict[str, Any] = {}
        metrics.update(retained_fid(self.evaluator, test.float_images(), test.labels, fake, retained))
        train_images = server.sample(self.config.downstream_samples, f"{CERTIFICATE_DRAW}-downstream")
        train_labels = pseudo_label(self.evaluator, train_images)  # an unconditional G's samples carry no label
        metrics["downstream_accuracy"] = downstream_accuracy(
            train_images, train_labels, test.float_images(), test.labels, num_classes, classes=retained,
            epochs=self.config.downstream_epochs, seed=0)
        return metrics

    def attack_sets(self, resolution: Resolution, index: int, forgotten_before: SiteIds
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The attack's three sets, seeded: F forgotten item ids (up to `mia-size`), R retained members (items the
        site still holds, of F's classes: never one forgotten by this or an earlier request) and N test-split
        positions of F's classes (non-members), each up to `mia-nonmembers` — 1,000 resolve a TPR at 0.1 % FPR."""
        site = resolution.request.site
        rng = np.random.default_rng(index)
        train, test = self.splits.train, self.splits.test
        forget = np.asarray(resolution.forget_ids[site])
        forget = rng.permutation(forget)[: self.config.mia_size]
        classes = np.unique(self.labels_of(forget))
        held = train.ids.numpy()[site_positions(self.scenario)[site]]
        gone = forgotten_at(resolution, forgotten_before, site)
        member_pool = held[~np.isin(held, gone)]
        member_pool = member_pool[np.isin(self.labels_of(member_pool), classes)]
        member = rng.permutation(member_pool)[: self.config.mia_nonmembers]
        nonmember = rng.permutation(np.flatnonzero(np.isin(test.labels.numpy(), classes)))[: self.config.mia_nonmembers]
        return forget, member, nonmember

    def _membership(self, engine: SiteEngine, server: GeneratorServer, resolution: Resolution, index: int,
                    forgotten_before: SiteIds) -> dict[str, Any]:
        """Both attacks on the requesting site's D: the LOGAN-style population attack on its raw logits, and the
        per-example LiRA-style attack calibrated by `lira-references` reference discriminators (0: none)."""
        site = resolution.request.site
        sets = self.attack_sets(resolution, index, forgotten_before)
        images, labels = self._attack_images(sets)
        conditional_labels = labels if self.scenario.model.conditional else None
        logits = engine.query_logits(site, images, conditional_labels).numpy()
        bounds = np.cumsum([0] + [len(ids) for ids in sets])
        groups = {name: np.arange(bounds[k], bounds[k + 1]) for k, name in enumerate(("forget", "member", "nonmember"))}
        metrics = membership_inference(*(logits[groups[name]] for name in ("forget", "member", "nonmember")))
        if self.config.lira_references:
            gone = forgotten_at(resolution, forgotten_before, site)
            metrics.update(self._lira(server, site, sets, gone, images, conditional_labels, logits, groups))
        return metrics

    def _attack_images(self, sets: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """F, R (training items by id) and N (test positions) as one image tensor, in that order, with labels."""
        train, test = self.splits.train, self.splits.test
        forget, member, nonmember = sets
        positions = self._positions(np.concatenate([forget, member]))
        images = torch.cat([train.float_images(positions), test.float_images(nonmember)])
        labels = torch.cat([train.labels[positions], test.labels[nonmember]])
        return images, labels

    def _lira(self, server: GeneratorServer, site: int, sets: tuple[np.ndarray, np.ndarray, np.ndarray],
              gone: np.ndarray, targets: torch.Tensor, target_labels: torch.Tensor | None, observed: np.ndarray,
              groups: dict[str, np.ndarray]) -> dict[str, Any]:
        """The per-example attack (`fedgan.evaluation.lira`): references of the site's architecture, each trained
        against G as it stands, on the site's other items (if any) plus half of the targets; seeded, so before, every
        method and retrain are attacked with the same masks and the same initial references."""
        c, training, train = self.config, self.scenario.training, self.splits.train
        forget, member, _ = sets
        held = train.ids.numpy()[site_positions(self.scenario)[site]]
        # The site's items outside F, R and everything forgotten (by this request or earlier); empty when R takes
        # every retained item (a small shard whose F covers every class it holds): each reference then trains on
        # its IN half of the targets alone.
        population = held[~np.isin(held, np.concatenate([gone, forget, member]))]
        positions = self._positions(population)
        fake_labels = server.sample_labels(LIRA_FAKE_SAMPLES, torch_generator(self.scenario.seed, "lira"))
        fake = server.sample(LIRA_FAKE_SAMPLES, f"{CERTIFICATE_DRAW}-lira", fake_labels)
        conditional = target_labels is not None
        spec, shape, num_classes = self.scenario.model, train.image_shape, train.num_classes
        references = train_references(
            lambda k: build_discriminator(spec, shape, num_classes, derive_seed(self.scenario.seed, "lira", k)),
            train.float_images(positions), train.labels[positions] if conditional else None,
            targets, target_labels, fake, fake_labels if conditional else None,
            count=c.lira_references, steps=c.lira_steps, batch_size=training.batch_size,
            lr=training.lr_discriminator, betas=(training.beta1, training.beta2), seed=self.scenario.seed)
        return lira_attack(observed, references, groups)
