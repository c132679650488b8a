"""Gossip mixing against the matrix form x <- W x of the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2ptrain.algorithms import Gossip, effective_weights, mix
from p2ptrain.algorithms.gossip import MIX_BLOCK, weighted_sum
from p2ptrain.topology import generate


def simulate_mixing(topology, values: np.ndarray, rounds: int) -> list[np.ndarray]:
    """Run ``mix`` for every peer of the graph, round after round; returns x after each round."""
    x = {pid: {"x": torch.tensor(values[i], dtype=torch.float64)} for i, pid in enumerate(topology.ids)}
    history = []
    for _ in range(rounds):
        x = {pid: mix(pid, x[pid], {j: x[j] for j in topology.in_neighbours(pid)}, topology.mixing_row(pid))
             for pid in topology.ids}
        history.append(np.stack([x[pid]["x"].numpy() for pid in topology.ids]))
    return history


@pytest.mark.parametrize("kind, n", [("ring", 8), ("torus", 16), ("exponential", 16), ("star", 8), ("line", 8)])
def test_mixing_every_peer_equals_w_times_x(kind, n):
    topology = generate(kind, n)
    values = np.random.default_rng(0).normal(size=(n, 5))
    history = simulate_mixing(topology, values, rounds=3)
    expected = values
    for step in history:
        expected = topology.weights @ expected
        np.testing.assert_allclose(step, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, n", [("ring", 8), ("ring", 16), ("torus", 16), ("exponential", 16), ("line", 8)])
def test_gossip_keeps_the_mean_and_contracts_at_rho(kind, n):
    topology = generate(kind, n)
    rho = topology.consensus_rate
    values = np.random.default_rng(1).normal(size=(n, 3))
    mean = values.mean(axis=0)
    history = simulate_mixing(topology, values, rounds=40)
    errors = [np.linalg.norm(values - mean)] + [np.linalg.norm(x - mean) for x in history]
    for x in history:
        np.testing.assert_allclose(x.mean(axis=0), mean, atol=1e-12)
    for before, after in zip(errors, errors[1:]):
        assert after <= rho * before * (1 + 1e-9)  # rho bounds every single round
    # ...and is the actual asymptotic rate: the last rounds shrink by rho to within 2%.
    late = (errors[-1] / errors[-11]) ** (1 / 10)
    assert late == pytest.approx(rho, rel=0.02)


def test_complete_graph_reaches_the_exact_average_in_one_round():
    topology = generate("complete", 8)
    values = np.random.default_rng(2).normal(size=(8, 4))
    (x,) = simulate_mixing(topology, values, rounds=1)
    np.testing.assert_allclose(x, np.tile(values.mean(axis=0), (8, 1)), atol=1e-12)


def test_missing_neighbour_weight_goes_to_self():
    row = {"p0": 1 / 3, "p1": 1 / 3, "p7": 1 / 3}
    assert effective_weights("p0", row, {"p1"}) == pytest.approx({"p0": 2 / 3, "p1": 1 / 3})
    assert effective_weights("p0", row, set()) == pytest.approx({"p0": 1.0})
    own = {"w": torch.tensor([3.0])}
    mixed = mix("p0", own, {"p1": {"w": torch.tensor([0.0])}}, row)
    assert mixed["w"].item() == pytest.approx(2.0)


def test_mix_never_modifies_its_inputs_and_the_gossip_update_replaces_storage():
    linear = torch.nn.Linear(3, 2)
    params = dict(linear.named_parameters())
    gossip = Gossip("a", {"a": 0.5, "b": 0.5}, params)
    sent = gossip.outgoing(0)
    sent_copy = {k: v.clone() for k, v in sent.items()}
    neighbour = {k: torch.zeros_like(v) for k, v in sent.items()}
    gossip.update(0, {"b": neighbour})
    for name in sent:
        assert torch.equal(sent[name], sent_copy[name])  # the frames already queued still hold these
        assert torch.allclose(params[name].detach(), sent_copy[name] / 2)
        assert params[name].data_ptr() != sent[name].data_ptr()


def test_mix_result_does_not_depend_on_arrival_order():
    row = {"a": 0.2, "b": 0.3, "c": 0.5}
    own = {"w": torch.tensor([0.1, 0.7], dtype=torch.float32)}
    b = {"w": torch.tensor([1e8, 3.3], dtype=torch.float32)}
    c = {"w": torch.tensor([-1e8, 1.1], dtype=torch.float32)}
    forward = mix("a", own, {"b": b, "c": c}, row)["w"]
    backward = mix("a", own, {"c": c, "b": b}, row)["w"]
    assert torch.equal(forward, backward)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("elements", [3 * MIX_BLOCK + 5, 2 * MIX_BLOCK, MIX_BLOCK + 1])
def test_mixing_in_blocks_is_bit_for_bit_mixing_whole_tensors(dtype, elements):
    g = torch.Generator().manual_seed(elements)
    own, a, b = (torch.randn(elements, generator=g, dtype=dtype) for _ in range(3))
    whole = own * 0.3
    whole.add_(a, alpha=1 / 3).add_(b, alpha=0.37)
    got = weighted_sum(own, 0.3, [(a, 1 / 3), (b, 0.37)])
    assert torch.equal(got, whole) and got.data_ptr() not in (own.data_ptr(), a.data_ptr(), b.data_ptr())
    # A tensor that is not contiguous takes the whole-tensor path, with the same values.
    matrix = torch.randn(2, MIX_BLOCK, generator=g, dtype=dtype)
    transposed = weighted_sum(matrix.t(), 0.5, [(matrix.t(), 0.5)])
    assert torch.equal(transposed, matrix.t() * 0.5 + matrix.t() * 0.5)
