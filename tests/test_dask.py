"""p2ptrain.dask: a swarm run on a dask.distributed LocalCluster, one peer per worker process.

Skipped, saying so, where dask is not installed (pip install -e ".[dask]")."""

from __future__ import annotations

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
