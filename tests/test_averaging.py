"""Pure gossip averaging done by peers over real TCP sockets: exact averages and the predicted rate."""

from __future__ import annotations

import numpy as np
import pytest

from p2ptrain.averaging import averaging_config, disagreement, initial_parameters, measured_rate, run_averaging
from p2ptrain.ports import free_port_block
from p2ptrain.topology import generate


pytestmark = pytest.mark.swarm  # every test here runs peers


def on_free_ports(kind: str, n: int, **kwargs):
    return generate(kind, n, base_port=free_port_block(n), **kwargs)


@pytest.mark.parametrize("n", [8, 16, 32])
def test_one_peer_exponential_peers_hold_the_exact_average_after_log2_n_rounds(n, tmp_path):
    topology = on_free_ports("one-peer-exponential", n)
    rounds = n.bit_length() - 1
    start = initial_parameters(topology, averaging_config(rounds))
    assert disagreement(start) > 1  # the peers really start apart
    final = run_averaging(topology, rounds, tmp_path)
    mean = start.mean(axis=0)
    for row in final:
        assert np.linalg.norm(row - mean) / np.linalg.norm(mean) < 1e-6


@pytest.mark.parametrize("kind, n, kwargs", [("ring", 16, {}), ("torus", 16, {}), ("exponential", 16, {}),
                                             ("hypercube", 16, {}), ("erdos-renyi", 32, {"seed": 0})])
def test_measured_contraction_is_within_5_percent_of_rho(kind, n, kwargs, tmp_path):
    topology = on_free_ports(kind, n, **kwargs)
    rate, _, _ = measured_rate(topology, tmp_path)
    assert rate == pytest.approx(topology.consensus_rate, rel=0.05)
