"""A swarm on a Dask cluster: one peer per worker, results gathered back here.

    python examples/dask_swarm.py                        # a LocalCluster of 4 worker processes on this machine
    python examples/dask_swarm.py tcp://scheduler:8786   # every worker of a running cluster is a peer

Needs the dask extra: pip install -e ".[dask]".
"""

import sys

from p2ptrain.dask import run_swarm


def main() -> int:
    client = None
    if len(sys.argv) > 1:
        from distributed import Client

        client = Client(sys.argv[1])
    # Without a client run_swarm starts LocalCluster(n_workers=4, processes=True) and closes it afterwards.
    result = run_swarm("ring", client=client, peers=None if client else 4, rounds=200, dataset="digits")
    for peer_id, outcome in result.peers.items():
        print(f"{peer_id} on {outcome.worker}: exit {outcome.exit_code}, "
              f"accuracy {outcome.result.get('test_accuracy', float('nan')):.4f}")
    print(f"consensus distance {result.consensus_distance:.2e}; each peer wrote {result.out}/PEER on its worker")
    return 0 if result.ok else 1


if __name__ == "__main__":  # Dask's worker processes import this file: only the script itself starts a swarm
    sys.exit(main())
