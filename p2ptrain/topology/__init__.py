"""Communication graphs: peers, endpoints, edges, mixing weights, spectra, TOML files."""

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
    "dump_topology",
    "generate",
    "generate_named",
    "load_topology",
    "parse_topology",
    "relocate",
]
