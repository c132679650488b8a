"""Communication graphs: peers, endpoints, edges, mixing weights, spectra, TOML files."""

from .digest import canonical_graph, topology_digest, topology_digests
from .files import dump_topology, load_topology, parse_topology
from .generators import GENERATORS, generate, generate_named
from .graph import ENDPOINT, PeerSpec, Topology, TopologyError, build_topology, relocate

__all__ = [
    "ENDPOINT",
    "GENERATORS",
    "PeerSpec",
    "Topology",
    "TopologyError",
    "build_topology",
    "canonical_graph",
    "dump_topology",
    "generate",
    "generate_named",
    "load_topology",
    "parse_topology",
    "relocate",
    "topology_digest",
    "topology_digests",
]
