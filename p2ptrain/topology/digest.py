"""The topology digest: a short hash of the graph and mixing weights a peer uses in a round.

Every message carries its sender's digest of the message's round (PROTOCOL.md
section 2.6), and a receiver whose own digest differs rejects the message:
peers started with different topology files (lazy weights against
Metropolis, an extra edge) would otherwise mix with weights nobody agreed on.
Only what the mixing uses is covered: the peers' ids, the round's edges and
their weights. Endpoints, bind addresses and pinned keys may differ between
hosts' copies of a file and are left out.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .graph import Topology


def canonical_graph(topology: Topology, round_: int) -> str:
    """The JSON text the digest of round ``round_`` hashes (PROTOCOL.md section 2.6)."""
    graph = topology.rounds[round_ % topology.period]
    ids = topology.ids
    # [sender, receiver, weight the receiver gives the sender], receivers in file order, then senders.
    # Self weights are left out: each is 1 minus its row's others, so they add nothing but rounding.
    edges = [[ids[j], ids[i], float(graph.weights[i, j])]
             for i in range(topology.size) for j in np.flatnonzero(graph.adjacency[i])]
    return json.dumps({"edges": edges, "peers": list(ids)}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)


def topology_digest(topology: Topology, round_: int) -> str:
    return hashlib.blake2b(canonical_graph(topology, round_).encode("utf-8"), digest_size=8).hexdigest()


def topology_digests(topology: Topology) -> tuple[str, ...]:
    """The digest of each round of the period: a message of round r carries entry r mod period."""
    return tuple(topology_digest(topology, r) for r in range(topology.period))
