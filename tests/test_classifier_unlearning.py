"""Tests for fedgan.classifier_unlearning: every method on a synthetic class request, the measurements, determinism.

The task is ten Gaussian blobs of 1×8×8 images (noise σ = 2 around random class centres): an MLP reaches about 95 %
in a second, and plain fine-tuning on the retained classes does NOT fully forget a class in 100 steps, so a method
that reaches retrain's forget accuracy is doing more than rehearsing. Setting (b) (a generator's pseudo-labelled
samples, a given reference) is tested on the same blobs standing in for generated samples.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from fedgan.classifier_unlearning import (
    CLASSIFIER_METHODS,
    ClassifierTask,
    ClassifierUnlearningOptions,
    accuracy,
    build_mlp_classifier,
    class_request,
    compare,
    compare_with_reference,
    complement_loss,
    cross_entropy_loss,
    downstream_classifier,
    error_maximising_noise,
    generated_class_request,
    impair_set,
    item_request,
    measure,
    train_classifier,
)
from fedgan.evaluation.forgetting import downstream_accuracy

FORGET_CLASS = 5
OPTIONS = ClassifierUnlearningOptions(epochs=3, batch_size=32)


def gaussian_blobs(per_class: int, seed: int, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` noisy copies of each of ten fixed random 1×8×8 class centres."""
    centres = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return centres[labels] + spread * noise, labels


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, ...]:
    return (*gaussian_blobs(100, seed=1), *gaussian_blobs(50, seed=2))


@pytest.fixture(scope="module")
def trained(data) -> torch.nn.Module:
    """The model every method starts from (trained once for the module)."""
    return train_classifier(build_mlp_classifier((1, 8, 8), 10, seed=0), data[0], data[1], seed=0, options=OPTIONS)


@pytest.fixture(scope="module")
def task(data) -> ClassifierTask:
    return class_request(*data, [FORGET_CLASS], 10)


@pytest.fixture(scope="module")
def rows(trained, task) -> dict[str, dict]:
    """Every registered method's row on the class request, by method name."""
    return {row["method"]: row for row in compare(CLASSIFIER_METHODS.names(), trained, task, options=OPTIONS)}


# ---- the class request ----

def test_the_trained_model_knows_the_class_and_retrain_never_predicts_it(rows):
    # Assert: the "before" row has the class; retrain, which never saw it, has forget accuracy ~0
    assert rows["original"]["forget_accuracy"] > 0.9
    assert rows["retrain"]["forget_accuracy"] <= 0.02
    assert rows["retrain"]["retained_accuracy"] > 0.9


@pytest.mark.parametrize("method", ["fnn", "noise", "uniform"])
def test_method_reaches_retrain_forget_accuracy_and_keeps_retained_accuracy(rows, method):
    # Prepare
    retrain, row = rows["retrain"], rows[method]

    # Assert
    assert row["forget_accuracy"] <= retrain["forget_accuracy"] + 0.05
    assert row["retained_accuracy"] >= retrain["retained_accuracy"] - 0.06


@pytest.mark.parametrize("layer_type", ["fixed-ranked", "varying-ranked", "fixed-all", "varying-all"])
def test_forgetting_layers_forget_where_the_same_rehearsal_alone_does_not(trained, task, rows, layer_type):
    # Prepare: fnn rehearses for 10 × 5 = 50 steps, no more than finetune takes (100)
    options = replace(OPTIONS, fnn_type=layer_type)
    assert options.fnn_iterations * options.fnn_rehearse_steps <= options.finetune_steps

    # Execute
    (row,) = compare(["fnn"], trained, task, options=options)

    # Assert
    assert rows["finetune"]["forget_accuracy"] > 0.2
    assert row["forget_accuracy"] <= 0.05
    assert row["retained_accuracy"] >= rows["retrain"]["retained_accuracy"] - 0.05


def test_aggressive_forgetting_layers_over_forget(trained, task, rows):
    # Prepare: every neuron at τ = 2, so after 20 iterations φ = e^-10 everywhere
    options = replace(OPTIONS, fnn_type="fixed-all", fnn_tau=2.0)

    # Execute
    (row,) = compare(["fnn"], trained, task, options=options)

    # Assert: the retained classes go with it
    assert row["retained_accuracy"] < rows["retrain"]["retained_accuracy"] - 0.3


def test_fnn_stops_once_forget_accuracy_reaches_the_target(trained, task):
    # Prepare
    options = replace(OPTIONS, fnn_stop_accuracy=0.1)

    # Execute
    (row,) = compare(["fnn"], trained, task, options=options)

    # Assert
    assert row["stopped_early"] and row["iterations"] < options.fnn_iterations
    assert row["forget_items_accuracy"] <= 0.1


def test_fnn_forget_term_takes_the_forget_items_own_label_away(trained, task, rows):
    # Prepare
    options, without = replace(OPTIONS, fnn_forget_weight=1.0), replace(OPTIONS, fnn_forget_weight=0.0)

    # Execute: the measured rows, and the same runs' models to look inside
    (row,) = compare(["fnn"], trained, task, options=options)
    (plain_row,) = compare(["fnn"], trained, task, options=without)
    unlearned, _ = CLASSIFIER_METHODS["fnn"](copy.deepcopy(trained), task, options, torch.Generator().manual_seed(0))
    plain, _ = CLASSIFIER_METHODS["fnn"](copy.deepcopy(trained), task, without, torch.Generator().manual_seed(0))

    # Assert: the items' own label loses probability against the same fnn without the term, which the row records
    def own_probability(model: torch.nn.Module) -> float:
        with torch.no_grad():
            images, labels = task.forget
            return float(model(images).softmax(1).gather(1, labels[:, None]).mean())

    assert row["forget_weight"] == 1.0 and plain_row["forget_weight"] == 0.0
    assert rows["fnn"]["forget_weight"] == ClassifierUnlearningOptions().fnn_forget_weight == 0.3  # on by default
    assert row["train_batches"] == 2 * plain_row["train_batches"]
    assert row["forget_items_accuracy"] <= 0.02
    assert own_probability(unlearned) < own_probability(plain)
    assert row["mia_auc"] != plain_row["mia_auc"]


def test_complement_loss_is_zero_without_the_label_and_large_with_it():
    # Prepare: a "model" that returns fixed logits
    logits = torch.tensor([[20.0, 0.0], [0.0, 20.0]])
    batch = (torch.zeros(2, 1), torch.tensor([1, 1]))

    # Execute
    loss = complement_loss(lambda _x: logits, batch)
    only_other = complement_loss(lambda _x: logits[:1].expand(2, 2), batch)

    # Assert
    assert float(only_other) == pytest.approx(0.0, abs=1e-6)
    assert float(loss) > 5


def test_uniform_step_caps_bound_each_phase(trained, task, data):
    # Prepare: no step in either phase, then one step in each
    still = replace(OPTIONS, uniform_steps=0, relearn_steps=0)
    one = replace(OPTIONS, uniform_steps=1, relearn_steps=1)

    # Execute
    (unchanged,) = compare(["uniform"], trained, task, options=still)
    (moved,) = compare(["uniform"], trained, task, options=one)
    (original,) = compare(["original"], trained, task, options=OPTIONS)

    # Assert: zero steps leave the trained model as it was; one step each moves it
    for key in ("forget_accuracy", "retained_accuracy", "mia_auc"):
        assert unchanged[key] == original[key]
    assert moved["mia_auc"] != original["mia_auc"]
    assert (moved["uniform_steps"], moved["relearn_steps"]) == (1, 1)
    assert (unchanged["train_batches"], moved["train_batches"]) == (0, 2)


def test_timing_repeats_time_each_method_again_and_measure_the_first_run(trained, task, rows):
    # Execute: fnn and uniform run three times each
    repeated = {row["method"]: row for row in
                compare(["fnn", "uniform"], trained, task, options=replace(OPTIONS, timing_repeats=3))}

    # Assert: three timings, the median reported; every measured number is the single run's
    for name, row in repeated.items():
        assert len(row["seconds_runs"]) == 3 and row["seconds"] == sorted(row["seconds_runs"])[1]
        for key in ("forget_accuracy", "retained_accuracy", "mia_auc", "train_batches"):
            assert row[key] == rows[name][key]
    assert len(rows["fnn"]["seconds_runs"]) == 1


@pytest.mark.parametrize("field, value", [("fnn_forget_weight", -0.1), ("uniform_steps", -1), ("relearn_steps", -2),
                                          ("timing_repeats", 0)])
def test_options_refuse_a_negative_forget_weight_or_step_cap(field, value):
    with pytest.raises(ValueError, match=field):
        ClassifierUnlearningOptions(**{field: value})


def test_rows_count_each_methods_training_batches(rows, task):
    # Assert: retrain passes over the retained items `epochs` times; fnn takes its rehearsal steps, twice the
    # batches with the forget term; finetune its steps
    retained = int((~task.forget_mask).sum())
    assert rows["retrain"]["train_batches"] == OPTIONS.epochs * -(-retained // OPTIONS.batch_size)
    assert rows["fnn"]["train_batches"] == 2 * OPTIONS.fnn_iterations * OPTIONS.fnn_rehearse_steps  # forget term on
    assert rows["finetune"]["train_batches"] == OPTIONS.finetune_steps
    assert all(row["train_batches"] > 0 for name, row in rows.items() if name != "original")


def test_compare_gives_the_same_numbers_for_the_same_seed(trained, task, rows):
    # Execute: all methods again, and fnn alone (its stream depends on (seed, name), not on the other methods)
    again = compare(CLASSIFIER_METHODS.names(), trained, task, options=OPTIONS)
    alone = compare(["fnn"], trained, task, options=OPTIONS)

    # Assert: everything but wall time repeats exactly
    def without_time(row: dict) -> dict:
        return {key: value for key, value in row.items() if key not in ("seconds", "seconds_runs")}

    for row in [*again, *alone]:
        assert without_time(row) == without_time(rows[row["method"]])


def test_compare_leaves_the_trained_model_unchanged(trained, task, data):
    # Prepare
    before = {name: tensor.clone() for name, tensor in trained.state_dict().items()}

    # Execute
    compare(["finetune", "noise"], trained, task, options=OPTIONS)

    # Assert
    assert all(torch.equal(before[name], tensor) for name, tensor in trained.state_dict().items())


# ---- UNSIR's noise ----

def test_error_maximising_noise_raises_the_frozen_models_loss_for_its_class(trained):
    # Prepare
    generator = torch.Generator().manual_seed(3)
    start = torch.randn((OPTIONS.noise_batch, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    labels = torch.full((OPTIONS.noise_batch,), FORGET_CLASS)
    weights = [p.clone() for p in trained.parameters()]

    # Execute
    noise = error_maximising_noise(trained, FORGET_CLASS, (1, 8, 8), OPTIONS, generator)

    # Assert: higher loss for class 5 than the initial draw, the model untouched and still trainable
    with torch.no_grad():
        assert cross_entropy_loss(trained, (noise, labels)) > cross_entropy_loss(trained, (start, labels)) + 1.0
    assert all(torch.equal(a, b) for a, b in zip(weights, trained.parameters()))
    assert all(p.requires_grad for p in trained.parameters())


def test_impair_set_labels_each_noise_with_its_own_class():
    # Prepare
    images, labels = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 4])
    noises = {3: torch.ones(2, 1, 8, 8), 5: torch.full((3, 1, 8, 8), 2.0)}

    # Execute
    impair_images, impair_labels = impair_set(images, labels, noises)

    # Assert: the retain subset first, then class 3's noise as 3 and class 5's as 5
    assert impair_labels.tolist() == [0, 1, 2, 4, 3, 3, 5, 5, 5]
    assert impair_images[4:6].eq(1.0).all() and impair_images[6:].eq(2.0).all()


def test_noise_forgets_two_classes(trained, data):
    # Prepare
    task = class_request(*data, [3, 5], 10)

    # Execute
    (row,) = compare(["noise"], trained, task, options=OPTIONS)

    # Assert
    assert row["noise_classes"] == [3, 5]
    assert row["forget_accuracy"] <= 0.05 and row["retained_accuracy"] > 0.85


# ---- measurement ----

def test_item_request_measures_forget_accuracy_on_the_items_and_retained_on_every_test_item(trained, data):
    # Prepare
    indices = torch.randperm(len(data[1]), generator=torch.Generator().manual_seed(4))[:60]
    task = item_request(*data, indices, 10)

    # Execute
    result = measure(trained, task, options=OPTIONS)

    # Assert
    assert result["forget_accuracy"] == result["forget_items_accuracy"]
    assert result["forget_accuracy"] == accuracy(trained, data[0][indices], data[1][indices])
    assert result["retained_accuracy"] == accuracy(trained, data[2], data[3])  # no class is forgotten
    assert result["mia_size"] == 60
    assert 0 <= result["mia_auc"] <= 1 and 0 <= result["mia_tpr_at_1pct_fpr"] <= 1


def test_requests_and_methods_reject_bad_names(data):
    # Execute / Assert
    with pytest.raises(ValueError, match="classes"):
        class_request(*data, [10], 10)
    with pytest.raises(ValueError, match="indices"):
        item_request(*data, [], 10)
    with pytest.raises(KeyError, match="retrain"):
        CLASSIFIER_METHODS["scrub"]


# ---- the fnn variants and setting (b): generated samples, a given reference ----

@pytest.mark.parametrize("layer_type", ["fixed-all", "fixed-ranked", "varying-all", "varying-ranked"])
def test_fnn_variant_uses_its_own_layer_type_whatever_the_options_say(rows, layer_type):
    # Assert: OPTIONS leaves fnn_type at its default (fixed-all); each variant keeps its own
    row = rows[f"fnn-{layer_type}"]
    assert row["fnn_type"] == layer_type
    assert row["forget_accuracy"] <= 0.05


def test_generated_class_request_attacks_against_the_heldout_draw(trained, data):
    # Prepare: the held-out "draw" is the forget items themselves, so members and non-members score alike
    images, labels, test_images, test_labels = data
    forget = labels == FORGET_CLASS
    task = generated_class_request(images, labels, images[forget], labels[forget], test_images, test_labels,
                                   [FORGET_CLASS], 10)

    # Execute
    result = measure(trained, task, options=OPTIONS)

    # Assert: the attack drew every forget item on both sides (chance exactly); accuracy is still on real test items
    assert result["mia_size"] == int(forget.sum())
    assert result["mia_auc"] == 0.5
    assert result["forget_accuracy"] == accuracy(trained, test_images[test_labels == FORGET_CLASS],
                                                 test_labels[test_labels == FORGET_CLASS])


def test_generated_class_request_refuses_a_class_no_sample_carries(data):
    # Prepare: no sample labelled 5 (a generator that never draws the class)
    images, labels, test_images, test_labels = data
    kept = labels != FORGET_CLASS

    # Execute / Assert
    with pytest.raises(ValueError, match="nothing to forget"):
        generated_class_request(images[kept], labels[kept], images, labels, test_images, test_labels,
                                [FORGET_CLASS], 10)


def test_compare_with_reference_measures_the_given_model_as_retrain(trained, task, rows, data):
    # Prepare: a reference trained apart from the task (here: on fresh blobs without the class)
    fresh_images, fresh_labels = gaussian_blobs(100, seed=5)
    kept = fresh_labels != FORGET_CLASS
    reference = train_classifier(build_mlp_classifier((1, 8, 8), 10, seed=1), fresh_images[kept], fresh_labels[kept],
                                 seed=1, options=OPTIONS)

    # Execute
    finetuned, retrain = compare_with_reference(["finetune", "retrain"], trained, task, reference, 12.5,
                                                options=OPTIONS)

    # Assert: retrain is the given model at the given cost; the other rows are compare's, number for number
    assert retrain["method"] == "retrain" and retrain["reference"] == "given" and retrain["seconds"] == 12.5
    assert {k: retrain[k] for k in measure(reference, task)} == measure(reference, task, options=OPTIONS)
    assert retrain["forget_accuracy"] <= 0.02
    timing = ("seconds", "seconds_runs")
    assert {k: v for k, v in finetuned.items() if k not in timing} == {
        k: v for k, v in rows["finetune"].items() if k not in timing}


def test_downstream_classifier_is_the_proofs_downstream_recipe():
    # Prepare: 28×28 blobs (the evaluator net's input size)
    centres = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    labels = torch.arange(10).repeat_interleave(20)
    images = centres[labels] + 0.5 * torch.randn(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(1))

    # Execute
    net = downstream_classifier(images, labels, 10, epochs=1, seed=0)

    # Assert: eval mode, and the accuracy the proof reports for the same samples, recipe and seed
    assert not net.training
    assert accuracy(net, images, labels) == downstream_accuracy(images, labels, images, labels, 10, epochs=1, seed=0)
