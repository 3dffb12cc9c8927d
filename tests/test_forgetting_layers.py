"""Tests for fedgan.forgetting_layers: the four layer types' factors, insertion, ranking, folding and the FNN loop.

The layers are a reconstruction of arXiv 2410.22374 from its abstract; these tests pin the reading down
(φ_i(t) = exp(−t/τ_i) exactly, identity at t = 0, which neurons each type touches) rather than the paper's numbers.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedgan.evaluation.classifier import EvaluatorNet
from fedgan.forgetting_layers import (
    FORGETTING_LAYER_TYPES,
    ForgettingBlock,
    ForgettingLayer,
    fnn_unlearn,
    fold_forgetting_layers,
    insert_forgetting_layers,
    rank_layers,
    record_activity,
)
from fedgan.models import ModelSpec, build_discriminator

ACTIVITY = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.0, 0.5, 0.2, 0.4])  # neurons 1 and 3 are the most active


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ranked_layer(name: str, **options: float) -> ForgettingLayer:
    """An 8-neuron layer of type `name`, ranked on ACTIVITY."""
    layer = FORGETTING_LAYER_TYPES[name](8, **options)
    layer.rank(ACTIVITY)
    return layer


# ---- the layer ----

@pytest.mark.parametrize("name", FORGETTING_LAYER_TYPES.names())
@pytest.mark.parametrize("shape", [(5, 8), (5, 8, 3, 3)])
def test_every_type_is_the_identity_at_t_zero(name, shape):
    # Prepare
    layer = ranked_layer(name, fraction=0.25)
    h = torch.randn(shape)

    # Execute
    out = layer(h)

    # Assert
    assert torch.equal(out, h)


def test_fixed_all_decays_as_exp_minus_t_over_tau():
    # Prepare
    layer = ranked_layer("fixed-all", tau=4.0)
    h = torch.randn(6, 8, 2, 2)

    # Execute
    layer.advance(3)
    after_three = layer(h)
    layer.advance(2)
    after_five = layer(h)

    # Assert
    assert float(layer.t) == 5.0
    torch.testing.assert_close(after_three, h * math.exp(-3 / 4), rtol=1e-6, atol=0)
    torch.testing.assert_close(after_five, h * math.exp(-5 / 4), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["fixed-ranked", "varying-ranked"])
def test_ranked_types_touch_only_the_most_active_neurons(name):
    # Prepare
    layer = ranked_layer(name, fraction=0.25, tau=3.0, tau_min=2.0, tau_max=6.0)
    h = torch.randn(4, 8, 3, 3)

    # Execute
    layer.advance(4)
    out = layer(h)

    # Assert: ⌈0.25·8⌉ = 2 neurons forget (1 and 3); every other channel passes through unchanged
    assert layer.selected.nonzero().squeeze(1).tolist() == [1, 3]
    untouched = [0, 2, 4, 5, 6, 7]
    assert torch.equal(out[:, untouched], h[:, untouched])
    assert (out[:, [1, 3]].abs() < h[:, [1, 3]].abs()).all()


def test_fixed_ranked_uses_one_rate_for_the_selected_neurons():
    # Prepare
    layer = ranked_layer("fixed-ranked", fraction=0.25, tau=3.0)

    # Execute
    layer.advance(6)

    # Assert
    torch.testing.assert_close(layer.factors()[[1, 3]], torch.full((2,), math.exp(-2.0)))


def test_varying_all_rates_differ_per_neuron_and_the_most_active_forgets_fastest():
    # Prepare
    layer = ranked_layer("varying-all", tau_min=2.0, tau_max=32.0)

    # Execute
    layer.advance(5)
    factors = layer.factors()

    # Assert: geometric rates 2·16^(r/7) by rank r, so τ is distinct per neuron and ordered by activity
    assert len(set(layer.tau.tolist())) == 8
    assert float(layer.tau[1]) == pytest.approx(2.0) and float(layer.tau[4]) == pytest.approx(32.0)
    order = torch.argsort(ACTIVITY, descending=True)
    assert (factors[order].diff() > 0).all()
    torch.testing.assert_close(factors, torch.exp(-5.0 / layer.tau))


def test_varying_ranked_spreads_rates_over_the_selected_neurons_only():
    # Prepare
    layer = ranked_layer("varying-ranked", fraction=0.25, tau_min=2.0, tau_max=8.0)

    # Execute
    layer.advance(8)

    # Assert: neuron 1 (most active) has τ_min, neuron 3 τ_max, the rest stay at 1
    expected = torch.ones(8)
    expected[1], expected[3] = math.exp(-8 / 2), math.exp(-8 / 8)
    torch.testing.assert_close(layer.factors(), expected)


def test_state_dict_round_trips_the_clock_rates_and_selection():
    # Prepare
    layer = ranked_layer("varying-ranked", fraction=0.5)
    layer.advance(7)
    fresh = FORGETTING_LAYER_TYPES["varying-ranked"](8, fraction=0.5)

    # Execute
    fresh.load_state_dict(layer.state_dict())

    # Assert
    assert set(layer.state_dict()) == {"t", "tau", "selected"}
    assert float(fresh.t) == 7.0
    assert torch.equal(fresh.selected, layer.selected) and torch.equal(fresh.factors(), layer.factors())


def test_layer_rejects_bad_options_and_mismatched_inputs():
    # Prepare
    layer = FORGETTING_LAYER_TYPES["fixed-all"](8)

    # Execute / Assert
    with pytest.raises(ValueError, match="tau_min"):
        FORGETTING_LAYER_TYPES["varying-all"](8, tau_min=5.0, tau_max=1.0)
    with pytest.raises(ValueError, match="fraction"):
        FORGETTING_LAYER_TYPES["fixed-ranked"](8, fraction=0.0)
    with pytest.raises(ValueError, match=r"expected \(N, 8"):
        layer(torch.randn(2, 7))
    with pytest.raises(ValueError, match="one per neuron"):
        layer.rank(torch.randn(3))
    with pytest.raises(ValueError, match="backwards"):
        layer.advance(-1)
    with pytest.raises(KeyError, match="fixed-all"):
        FORGETTING_LAYER_TYPES["fixed"]


# ---- insertion, ranking, folding ----

def test_insertion_keeps_a_dcgan_discriminator_output_at_t_zero():
    # Prepare: DCGAN's D applies LeakyReLU functionally, so the layers follow its convolutions
    spec = ModelSpec(architecture="dcgan", conditional=True, width=8)
    discriminator = build_discriminator(spec, (1, 28, 28), 10, seed=1)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))

    # Execute
    layered, layers = insert_forgetting_layers(discriminator, "fixed-ranked", (x, y), after=(nn.Conv2d,))
    rank_layers(layers, record_activity(layered, layers, [(x, y)]))

    # Assert: one layer per conv, sized to its channels; same logits; the original is left as it was
    assert [layer.num_neurons for layer in layers] == [8, 16]
    assert torch.equal(layered(x, y), discriminator(x, y))
    assert not any(isinstance(m, ForgettingBlock) for m in discriminator.modules())


def test_insertion_keeps_a_classifier_output_at_t_zero():
    # Prepare
    torch.manual_seed(0)
    classifier = EvaluatorNet((1, 28, 28), 10).eval()
    x = torch.randn(4, 1, 28, 28)

    # Execute
    layered, layers = insert_forgetting_layers(classifier, "varying-all", x)

    # Assert: a layer after each of the three ReLUs
    assert [layer.num_neurons for layer in layers] == [16, 32, 128]
    assert torch.equal(layered.eval()(x), classifier(x))


def test_insertion_refuses_a_module_reused_at_two_widths():
    # Prepare: one ReLU object after a 4-wide and a 3-wide layer
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.relu = nn.Linear(2, 4), nn.Linear(4, 3), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.b(self.relu(self.a(x))))

    # Execute / Assert
    with pytest.raises(ValueError, match="several widths"):
        insert_forgetting_layers(Shared(), "fixed-all", torch.randn(2, 2))


def test_record_activity_is_the_mean_absolute_activation_per_neuron():
    # Prepare
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        model[0].bias.zero_()
    layered, layers = insert_forgetting_layers(model, "fixed-ranked", torch.zeros(1, 2))
    batches = [torch.tensor([[1.0, 2.0], [3.0, -4.0]]), torch.tensor([[-5.0, -6.0]])]

    # Execute
    (activity,) = record_activity(layered, layers, batches)

    # Assert: ReLU outputs are [1, 0], [3, 4], [0, 6]
    torch.testing.assert_close(activity, torch.tensor([4 / 3, 10 / 3], dtype=torch.float64))


def test_folding_gives_the_same_outputs_with_the_original_state_dict_keys():
    # Prepare
    spec = ModelSpec(architecture="dcgan", conditional=False, width=8)
    discriminator = build_discriminator(spec, (1, 28, 28), 10, seed=2)
    x = torch.randn(5, 1, 28, 28)
    layered, layers = insert_forgetting_layers(discriminator, "varying-all", x, after=(nn.Conv2d,))
    for layer in layers:
        layer.advance(9)

    # Execute
    folded = fold_forgetting_layers(layered)

    # Assert
    assert list(folded.state_dict()) == list(discriminator.state_dict())
    torch.testing.assert_close(folded(x), layered(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(folded(x), discriminator(x))


def test_folding_refuses_layers_after_an_activation():
    # Prepare
    layered, _ = insert_forgetting_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), "fixed-all", torch.zeros(1, 3))

    # Execute / Assert
    with pytest.raises(ValueError, match="cannot fold"):
        fold_forgetting_layers(layered)


# ---- the unlearning loop ----

def test_fnn_unlearn_decays_then_rehearses_and_stops_when_asked():
    # Prepare: count rehearsal calls; stop once the clock reads 3
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    layered, layers = insert_forgetting_layers(model, "fixed-all", torch.zeros(1, 3))
    batches = [torch.randn(8, 3) for _ in range(2)]
    clocks = []

    def loss_fn(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        clocks.append(float(layers[0].t))
        return net(batch).pow(2).mean()

    # Execute
    run = fnn_unlearn(layered, layers, batches, loss_fn, iterations=10, rehearse_steps=2,
                      stop=lambda: float(layers[0].t) >= 3)

    # Assert: the clock moves before each iteration's two rehearsal steps
    assert run.iterations == 3 and run.stopped_early
    assert clocks == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert len(run.rehearsal_losses) == 3


def test_fnn_unlearn_refuses_empty_retain_data():
    # Prepare
    layered, layers = insert_forgetting_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), "fixed-all",
                                               torch.zeros(1, 3))

    # Execute / Assert
    with pytest.raises(ValueError, match="retain batches"):
        fnn_unlearn(layered, layers, [], lambda net, batch: net(batch).sum(), iterations=1)


@pytest.mark.parametrize("name", FORGETTING_LAYER_TYPES.names())
def test_ranking_is_skipped_only_where_it_changes_nothing(name):
    # Prepare: the same model unlearned with and without forget inputs to rank on
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    forget = [torch.randn(16, 3) * torch.tensor([3.0, 0.1, 1.0])]  # uneven activity: ranking has something to see
    batches = [torch.randn(8, 3) for _ in range(2)]
    runs = []
    for inputs in (None, forget):
        layered, layers = insert_forgetting_layers(model, name, torch.zeros(1, 3))
        torch.manual_seed(1)
        fnn_unlearn(layered, layers, batches, lambda net, b: net(b).pow(2).mean(), iterations=3,
                    forget_inputs=inputs)
        runs.append((layers[0].selected.clone(), layers[0].tau.clone(), layered(batches[0]).detach()))

    # Assert: a type that ignores the ranking (and says so) ends identically; the others are ranked
    same = all(torch.equal(a, b) for a, b in zip(*runs))
    assert same == (not FORGETTING_LAYER_TYPES[name].uses_ranking)
