"""Robust mixing (ClippedGossip, trimmed mean) against closed forms, numpy, and a simulated swarm with a liar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from p2ptrain.algorithms import AggregatorError, Gossip, clipped_mix, mix, trimmed_mean
from p2ptrain.algorithms.robust import clipped_gossip, clipping_radius, distance
from p2ptrain.attacks import parse_attack
from p2ptrain.topology import generate

RING_ROW = {"p0": 1 / 3, "p1": 1 / 3, "p7": 1 / 3}


def tensors(rng: np.random.Generator, scale: float = 1.0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """A small model: a matrix, a vector and a scalar."""
    return {"w": torch.tensor(scale * rng.normal(size=(3, 4)), dtype=dtype),
            "b": torch.tensor(scale * rng.normal(size=(5,)), dtype=dtype),
            "s": torch.tensor(scale * rng.normal(), dtype=dtype)}


def flat(ts: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([t.detach().double().reshape(-1).numpy() for t in ts.values()])


def near(rng: np.random.Generator, centre: dict[str, torch.Tensor], spread: float) -> dict[str, torch.Tensor]:
    return {name: t + spread * torch.tensor(rng.normal(size=tuple(t.shape)), dtype=t.dtype)
            for name, t in centre.items()}


def torus_row(peer: str = "p5") -> dict[str, float]:
    return generate("torus", 16).mixing_row(peer)


# --- the clipping radius --------------------------------------------------------------------------------


def test_radius_with_equal_weights_is_the_distance_of_the_neighbour_after_the_b_farthest():
    distances = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 10.0}
    weights = dict.fromkeys(distances, 0.2)
    assert [clipping_radius(distances, weights, b) for b in range(6)] == [10.0, 5.0, 2.0, 1.0, 0.0, 0.0]


def test_radius_with_unequal_weights_is_the_weighted_quantile_worked_by_hand():
    distances = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 10.0}
    weights = {"a": 0.2, "b": 0.1, "c": 0.3, "d": 0.1}
    # b = 1: one bad neighbour could hold at most 0.3 (c's weight).
    #   tau = 0 -> beyond: a b c d = 0.7 > 0.3;  tau = 1 -> b c d = 0.5 > 0.3;
    #   tau = 2 -> b d = 0.2 <= 0.3.  So tau = 2: the two light far neighbours are clipped together,
    #   where the unweighted rule would have clipped d alone (tau = 5).
    assert clipping_radius(distances, weights, 1) == 2.0
    # b = 2: at most 0.3 + 0.2 = 0.5.  tau = 1 -> b c d = 0.5 <= 0.5, tau = 0 -> 0.7.  So tau = 1.
    assert clipping_radius(distances, weights, 2) == 1.0


def test_radius_ties_and_weights_equal_as_fractions():
    # Two neighbours at the farthest distance weigh more than one bad neighbour can: neither is clipped.
    assert clipping_radius({"a": 3.0, "b": 3.0, "c": 1.0}, dict.fromkeys("abc", 0.25), 1) == 3.0
    # 0.1 + 0.2 is 0.30000000000000004 in floats but 0.3 as fractions: it fits a budget of 0.3.
    assert clipping_radius({"a": 10.0, "b": 9.0, "c": 1.0}, {"a": 0.1, "b": 0.2, "c": 0.3}, 1) == 1.0


def test_radius_is_zero_when_every_neighbour_heard_may_be_bad():
    assert clipping_radius({"a": 4.0}, {"a": 0.5}, 1) == 0.0
    assert clipping_radius({}, {}, 1) == 0.0


def test_attacker_cannot_raise_the_radius_beyond_the_honest_distances():
    rng = np.random.default_rng(3)
    own = tensors(rng)
    honest = {f"p{k}": near(rng, own, 0.1) for k in (1, 4, 12)}
    row = torus_row("p0")
    farthest_honest = max(distance(x, own) for x in honest.values())
    for factor in (-10.0, 1e3, 1e6):
        attacker = {name: factor * t for name, t in own.items()}
        result = clipped_gossip("p0", own, honest | {"p3": attacker}, row, b=1)
        assert result.radius <= farthest_honest
        assert result.clipped == ["p3"]


# --- ClippedGossip ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", [RING_ROW, torus_row("p0"), generate("complete", 8).mixing_row("p0")])
def test_clipped_with_nothing_to_clip_equals_mean_mixing(row):
    rng = np.random.default_rng(0)
    own = tensors(rng)
    received = {peer: near(rng, own, 0.01) for peer in row if peer != "p0"}
    expected = mix("p0", own, received, row)
    for result in (clipped_mix("p0", own, received, row, radius=1e9),  # a radius no neighbour reaches
                   clipped_mix("p0", own, received, row, b=0)):  # b = 0: the radius is the largest distance
        for name in own:
            np.testing.assert_allclose(result[name].numpy(), expected[name].numpy(), rtol=0, atol=1e-12)


def test_missing_neighbour_weight_stays_with_self_as_in_mean_mixing():
    rng = np.random.default_rng(1)
    own, p1 = tensors(rng), tensors(rng)
    expected = mix("p0", own, {"p1": p1}, RING_ROW)  # p7 missing: its 1/3 goes to p0
    result = clipped_mix("p0", own, {"p1": p1}, RING_ROW, radius=math.inf)
    for name in own:
        np.testing.assert_allclose(result[name].numpy(), expected[name].numpy(), rtol=0, atol=1e-12)


def test_a_neighbour_at_minus_ten_times_moves_mean_far_but_clipped_by_at_most_its_weight_times_tau():
    rng = np.random.default_rng(2)
    own = tensors(rng, scale=3.0)
    p1 = near(rng, own, 0.05)
    attacker = {name: -10 * t for name, t in own.items()}
    received = {"p1": p1, "p7": attacker}

    # Without p7's term both rules agree on this (p1 is the closer neighbour, so it is never clipped).
    honest_part = flat(own) + RING_ROW["p1"] * (flat(p1) - flat(own))
    plain = flat(mix("p0", own, received, RING_ROW))
    result = clipped_gossip("p0", own, received, RING_ROW, b=1)
    assert result.radius == pytest.approx(distance(p1, own), rel=1e-12)
    assert result.clipped == ["p7"]
    moved_by_attacker = np.linalg.norm(flat(result.tensors) - honest_part)
    assert moved_by_attacker <= RING_ROW["p7"] * result.radius * (1 + 1e-9)
    assert moved_by_attacker == pytest.approx(RING_ROW["p7"] * result.radius, rel=1e-9)  # clipped, not dropped
    # Plain mixing is moved by W_ij ||x_j - x_i|| = 11/3 ||x_i||: hundreds of times more.
    assert np.linalg.norm(plain - flat(mix("p0", own, {"p1": p1}, RING_ROW | {"p0": 1 / 3}))) > 100 * moved_by_attacker


def test_each_neighbour_moves_the_clipped_result_by_at_most_its_weight_times_tau():
    rng = np.random.default_rng(4)
    own = tensors(rng)
    row = torus_row("p0")
    received = {peer: near(rng, own, spread) for peer, spread in zip(("p1", "p3", "p4", "p12"), (0.1, 5, 0.3, 50))}
    result = clipped_gossip("p0", own, received, row, b=1)
    total = np.zeros_like(flat(own))
    for peer, x in received.items():
        step = row[peer] * (flat(x) - flat(own)) * min(1.0, result.radius / distance(x, own))
        assert np.linalg.norm(step) <= row[peer] * result.radius * (1 + 1e-12)
        total += step
    np.testing.assert_allclose(flat(result.tensors), flat(own) + total, rtol=0, atol=1e-12)


def test_nan_or_inf_neighbour_adds_nothing_to_clipped_mixing():
    rng = np.random.default_rng(5)
    own, p1 = tensors(rng), tensors(rng)
    broken = {name: torch.full_like(t, math.nan) for name, t in own.items()}
    broken["b"][0] = math.inf
    result = clipped_gossip("p0", own, {"p1": p1, "p7": broken}, RING_ROW, b=1)
    assert result.distances["p7"] == math.inf and result.clipped == ["p7"]
    expected = flat(own) + RING_ROW["p1"] * (flat(p1) - flat(own))
    np.testing.assert_allclose(flat(result.tensors), expected, rtol=0, atol=1e-12)


# --- trimmed mean -----------------------------------------------------------------------------------------


def numpy_trimmed_mean(values: np.ndarray, b: int) -> np.ndarray:
    """The oracle: sort every coordinate, drop b at each end; with too few values, the median."""
    n = values.shape[0]
    if n <= 2 * b:
        return np.median(values, axis=0)
    return np.sort(values, axis=0)[b:n - b].mean(axis=0)


@pytest.mark.parametrize("neighbours", [0, 1, 2, 3, 4, 7])
@pytest.mark.parametrize("b", [0, 1, 2, 3])
def test_trimmed_mean_equals_numpy(neighbours, b):
    rng = np.random.default_rng(10 * neighbours + b)
    row = {"me": 0.1} | {f"n{k}": 0.9 / max(neighbours, 1) for k in range(neighbours)}
    own = tensors(rng)
    received = {peer: tensors(rng, scale=10) for peer in row if peer != "me"}
    result = trimmed_mean("me", own, received, row, b)
    for name in own:
        values = np.stack([own[name].numpy()] + [received[peer][name].numpy() for peer in row if peer != "me"])
        np.testing.assert_allclose(result[name].numpy(), numpy_trimmed_mean(values, b), rtol=0, atol=1e-12)


def test_trimmed_mean_shrugs_off_one_attacker_and_its_nan():
    rng = np.random.default_rng(11)
    own = tensors(rng)
    honest = {peer: near(rng, own, 0.1) for peer in ("p1", "p4", "p12")}
    for poison in (-10.0, math.nan):
        attacker = {name: poison * t for name, t in own.items()}
        result = trimmed_mean("p0", own, honest | {"p3": attacker}, torus_row("p0"), b=1)
        lowest = np.minimum.reduce([flat(own)] + [flat(x) for x in honest.values()])
        highest = np.maximum.reduce([flat(own)] + [flat(x) for x in honest.values()])
        assert np.all((lowest <= flat(result)) & (flat(result) <= highest))


# --- both rules: purity and determinism -------------------------------------------------------------------


def rules():
    return [lambda *args: clipped_mix(*args, b=1), lambda *args: trimmed_mean(*args, b=1),
            lambda *args: clipped_mix(*args, b=2), lambda *args: trimmed_mean(*args, b=2)]


@pytest.mark.parametrize("rule", rules())
def test_result_does_not_depend_on_arrival_order(rule):
    rng = np.random.default_rng(6)
    row = torus_row("p0")
    # float32 with wildly different magnitudes: any change in summation order would show.
    own = tensors(rng, dtype=torch.float32)
    received = {peer: tensors(rng, scale=10.0 ** k, dtype=torch.float32)
                for k, peer in enumerate(("p1", "p3", "p4", "p12"))}
    forward = rule("p0", own, received, row)
    backward = rule("p0", own, dict(reversed(list(received.items()))), row)
    for name in own:
        assert torch.equal(forward[name], backward[name])


@pytest.mark.parametrize("rule", rules())
def test_inputs_are_never_modified_and_results_are_new_tensors(rule):
    rng = np.random.default_rng(7)
    own = tensors(rng)
    received = {peer: tensors(rng) for peer in ("p1", "p3", "p4", "p12")}
    before = {"own": {k: v.clone() for k, v in own.items()},
              **{peer: {k: v.clone() for k, v in x.items()} for peer, x in received.items()}}
    result = rule("p0", own, received, torus_row("p0"))
    inputs = {"own": own, **received}
    for key, ts in inputs.items():
        for name, t in ts.items():
            assert torch.equal(t, before[key][name])
    pointers = {t.data_ptr() for ts in inputs.values() for t in ts.values()}
    assert not pointers & {t.data_ptr() for t in result.values()}


def test_nothing_heard_keeps_own_values_in_new_tensors():
    rng = np.random.default_rng(8)
    own = tensors(rng)
    for rule in (clipped_mix, trimmed_mean):
        result = rule("p0", own, {}, RING_ROW)
        for name in own:
            assert torch.equal(result[name], own[name]) and result[name].data_ptr() != own[name].data_ptr()


# --- the Gossip option ------------------------------------------------------------------------------------


def linear_gossip(**options) -> tuple[Gossip, dict[str, torch.nn.Parameter]]:
    linear = torch.nn.Linear(3, 2)
    params = dict(linear.named_parameters())
    return Gossip("a", {"a": 0.4, "b": 0.3, "c": 0.3}, params, **options), params


def test_default_gossip_is_bit_for_bit_mean_mixing():
    gossip, params = linear_gossip()
    sent = {k: v.detach().clone() for k, v in gossip.outgoing(0).items()}
    neighbours = {"b": {k: torch.randn_like(v) for k, v in sent.items()},
                  "c": {k: torch.randn_like(v) for k, v in sent.items()}}
    gossip.update(0, neighbours)
    expected = mix("a", sent, neighbours, {"a": 0.4, "b": 0.3, "c": 0.3})
    for name in sent:
        assert torch.equal(params[name].detach(), expected[name])
    assert gossip.metrics() == {}


@pytest.mark.parametrize("aggregator", ["clipped", "trimmed-mean"])
def test_robust_gossip_replaces_storage_and_leaves_sent_tensors_alone(aggregator):
    gossip, params = linear_gossip(aggregator=aggregator, robust_b=1)
    sent = gossip.outgoing(0)
    sent_copy = {k: v.clone() for k, v in sent.items()}
    neighbours = {"b": {k: v + 0.1 for k, v in sent_copy.items()}, "c": {k: -10 * v for k, v in sent_copy.items()}}
    gossip.update(0, neighbours)
    for name in sent:
        assert torch.equal(sent[name], sent_copy[name])  # what was queued for sending is unchanged
        assert params[name].data_ptr() != sent[name].data_ptr()
    if aggregator == "clipped":
        metrics = gossip.metrics()
        assert metrics["clipped"] == ["c"] and metrics["clipping_radius"] == pytest.approx(
            distance(neighbours["b"], sent_copy), rel=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"aggregator": "median"}, "mean, clipped, trimmed-mean"),
    ({"aggregator": "clipped", "robust_b": -1}, "integer >= 0"),
    ({"aggregator": "clipped", "robust_b": 1.5}, "integer >= 0"),
])
def test_bad_aggregator_options_say_what_to_use(options, message):
    with pytest.raises(AggregatorError, match=message):
        linear_gossip(**options)


# --- a swarm with one liar --------------------------------------------------------------------------------


def run_swarm(kind: str, n: int, rule, values: np.ndarray, attack_spec: str,
              rounds: int) -> list[dict[str, np.ndarray]]:
    """Pure averaging, every peer in lockstep; the attacker mixes honestly but sends what its attack makes.

    Returns every peer's x after each round.
    """
    topology = generate(kind, n)
    attack = parse_attack(attack_spec, seed=0, peers=topology.ids)
    x = {peer: {"x": torch.tensor(values[i])} for i, peer in enumerate(topology.ids)}
    history = []
    for round_ in range(rounds):
        sent = {peer: attack.corrupt(x[peer], round_) if attack.applies_to(peer) else x[peer] for peer in x}
        x = {peer: (mix if attack.applies_to(peer) else rule)(
                 peer, x[peer], {j: sent[j] for j in topology.in_neighbours(peer)}, topology.mixing_row(peer))
             for peer in topology.ids}
        history.append({peer: x[peer]["x"].numpy() for peer in x})
    return history


def swarm_start(n: int, seed: int = 0) -> np.ndarray:
    """Peers near a common point: a spread of about 0.1 around a point of norm about 25."""
    rng = np.random.default_rng(seed)
    return 10 * rng.normal(size=(1, 6)) + 0.1 * rng.normal(size=(n, 6))


def honest_distances(history, values: np.ndarray, honest: list[str], ids: tuple[str, ...]) -> np.ndarray:
    """Per round, the largest distance of an honest peer from the honest peers' initial mean."""
    target = np.mean([values[ids.index(peer)] for peer in honest], axis=0)
    return np.array([max(np.linalg.norm(x[peer] - target) for peer in honest) for x in history])


def test_ring_of_eight_with_a_liar_drags_mean_mixing_away_but_not_clipped_gossip():
    ids = generate("ring", 8).ids
    honest = [peer for peer in ids if peer != "p3"]
    values = swarm_start(8)
    start = honest_distances([{peer: values[i] for i, peer in enumerate(ids)}], values, honest, ids)[0]

    dragged = honest_distances(run_swarm("ring", 8, mix, values, "p3:scale:-10", 50), values, honest, ids)
    assert dragged[-1] > 1e6 * start  # p3's -10x is amplified round after round

    for rule in (clipped_mix, trimmed_mean):
        held = honest_distances(run_swarm("ring", 8, rule, values, "p3:scale:-10", 50), values, honest, ids)
        # Every honest peer stays, in every round, within the honest peers' own initial spread of their mean,
        # while the liar's messages are about 11 * 25 away. (On a ring with b = 1 neither rule reaches
        # consensus: each peer has one other honest neighbour, see clipping_radius.)
        assert held.max() <= start


def test_torus_with_a_liar_still_reaches_consensus_near_the_honest_mean_with_clipped_gossip():
    topology = generate("torus", 16)
    honest = [peer for peer in topology.ids if peer != "p3"]
    values = swarm_start(16, seed=1)
    start = honest_distances([{peer: values[i] for i, peer in enumerate(topology.ids)}], values, honest,
                             topology.ids)[0]
    history = run_swarm("torus", 16, clipped_mix, values, "p3:scale:-10", 60)
    final = np.stack([history[-1][peer] for peer in honest])
    assert np.linalg.norm(final - final.mean(axis=0), axis=1).max() < 0.05 * start  # consensus, nearly
    assert honest_distances(history, values, honest, topology.ids)[-1] < 0.5 * start
    dragged = run_swarm("torus", 16, mix, values, "p3:scale:-10", 60)
    assert honest_distances(dragged, values, honest, topology.ids)[-1] > 1e3 * start
