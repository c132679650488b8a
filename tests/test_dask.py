"""p2ptrain.dask: a swarm run on a dask.distributed LocalCluster, one peer per worker process.

Skipped, saying so, where dask is not installed (pip install -e ".[dask]")."""

from __future__ import annotations

import json

import pytest
import torch

try:
    from p2ptrain.dask import run_swarm
except ImportError as missing:
    pytest.skip(f"dask.distributed is not installed ({missing})", allow_module_level=True)

from p2ptrain.ports import free_port_block
from p2ptrain.simulate import simulate


# Four worker processes that each import torch, and the simulation: 2-3 minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.swarm, pytest.mark.timeout(600)]


def test_ring4_on_a_local_cluster_of_four_worker_processes_trains_exactly_as_the_simulation(tmp_path):
    # No client given: run_swarm starts LocalCluster(n_workers=4, processes=True), one peer per worker.
    result = run_swarm("ring", peers=4, rounds=200, dataset="digits", seed=3, out=str(tmp_path / "run"),
                       base_port=free_port_block(4), recv_timeout=20.0, timeout=480)
    assert result.ok, {peer_id: (o.exit_code, o.error) for peer_id, o in result.peers.items()}
    assert len({outcome.worker for outcome in result.peers.values()}) == 4  # each peer on a worker of its own
    for peer_id, outcome in result.peers.items():
        assert outcome.result["rounds_completed"] == 200 and outcome.result["status"] == "completed"
        # Each worker made its own key pair: the connections were CurveZMQ, with the keys pinned.
        assert result.topology.peer(peer_id).public_key is not None
    assert min(result.accuracies.values()) >= 0.93, result.accuracies
    assert result.consensus_distance <= 1e-2

    # The oracle: every message on time makes a synchronous swarm deterministic, so the models the
    # workers sent back are those of the lockstep simulation of the same run.
    expected = simulate(result.config, result.topology)
    for peer_id, state in expected.items():
        for name, tensor in state.items():
            torch.testing.assert_close(result.models[peer_id][name], tensor, rtol=0, atol=1e-6)
    print(f"\ndask ring4: accuracy {result.accuracies}, consensus distance {result.consensus_distance:.3e}")


def test_a_timeout_stops_the_peers_on_the_workers_which_write_their_results_and_free_their_ports(tmp_path):
    from distributed import Client, LocalCluster

    from p2ptrain.ports import port_free

    base_port = free_port_block(2)
    # A client of the user's own: the cluster outlives run_swarm, so only a real stop ends its peers.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with pytest.raises(TimeoutError, match="2 of 2 peers had not finished after 20s; stopped them"):
            run_swarm("ring", client=client, peers=2, rounds=100_000, min_compute_seconds=0.05, insecure=True,
                      out=str(tmp_path / "run"), base_port=base_port, timeout=20)
        for peer_id in ("p0", "p1"):
            result = json.loads((tmp_path / "run" / peer_id / "result.json").read_text())
            assert result["status"] == "interrupted" and 0 < result["rounds_completed"] < 100_000
        assert all(port_free(base_port + k) for k in range(2))
