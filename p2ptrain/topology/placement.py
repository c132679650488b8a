"""Where the peers of a generated topology listen: across hosts, K peers on each, or by a name template.

Peers are numbered host by host (p0 .. pK-1 on the first host, pK .. p2K-1 on
the second, ...), the order in which cluster launchers number their ranks
(srun's block distribution, torchrun's nodes, mpirun --map-by node:PE=K), so
the n-th rank is the n-th peer and sits on its own host.

A peer's endpoint is what its neighbours dial; it binds there too when the
host is an IP address. A host name is dialled as it is, but the peer binds to
every interface (``tcp://0.0.0.0:PORT``): ZeroMQ binds to an address or an
interface, never to a DNS name.
"""

from __future__ import annotations

import ipaddress
import string
from pathlib import Path

from .graph import ENDPOINT, Topology, TopologyError, bracketed, relocate

ANY_INTERFACE = "0.0.0.0"


def read_hosts_file(path: str | Path) -> list[str]:
    """Host names, one per line, as ``scontrol show hostnames`` prints them; blank lines and # comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise TopologyError(f"--hosts-file {path}: cannot read it ({error.strerror or error}); write one host "
                            "per line, e.g. scontrol show hostnames > hosts.txt") from None
    hosts = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    hosts = [host for host in hosts if host]
    if not hosts:
        raise TopologyError(f"--hosts-file {path} names no host; write one host per line")
    return hosts


def split_hosts(text: str) -> list[str]:
    """--hosts h1,h2,...: the hosts in order."""
    hosts = [host.strip() for host in text.split(",") if host.strip()]
    if not hosts:
        raise TopologyError(f"--hosts {text!r} names no host; write them comma-separated, e.g. --hosts node1,node2")
    return hosts


def on_hosts(topology: Topology, hosts: list[str], per_host: int, base_port: int) -> Topology:
    """``topology`` with ``per_host`` peers on each host in turn, listening on ports base_port, base_port + 1, ..."""
    if per_host < 1:
        raise TopologyError(f"--per-host {per_host}: put at least one peer on each host")
    duplicates = sorted({host for host in hosts if hosts.count(host) > 1})
    if duplicates:
        raise TopologyError(f"host(s) {', '.join(duplicates)} listed twice; list each host once and raise "
                            "--per-host to put more peers on it")
    if len(hosts) * per_host != topology.size:
        raise TopologyError(f"{len(hosts)} hosts x {per_host} per host = {len(hosts) * per_host} peers, but the "
                            f"topology has {topology.size}; drop --peers or make them agree")
    endpoints, binds = [], []
    for host in hosts:
        for k in range(per_host):
            endpoints.append(f"tcp://{bracketed(host)}:{base_port + k}")
            binds.append(endpoints[-1] if _is_address(host) else f"tcp://{ANY_INTERFACE}:{base_port + k}")
    return relocate(topology, endpoints, binds)


def from_template(topology: Topology, template: str) -> Topology:
    """Peer i at ``template`` with {index} replaced by i (a Kubernetes StatefulSet's stable names,
    tcp://p2p-{index}.p2p.svc:25000), listening on every interface at that endpoint's port."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields != {"index"}:
        raise TopologyError(f"--endpoint-template {template!r}: use {{index}} (the peer's number) and no other "
                            "field, e.g. 'tcp://p2p-{index}.p2p.svc:25000'")
    endpoints, binds = [], []
    for i in range(topology.size):
        endpoint = template.format(index=i)
        match = ENDPOINT.fullmatch(endpoint)
        if not match or match["host"] is None:
            raise TopologyError(f"--endpoint-template {template!r} gives {endpoint!r}; write tcp://HOST:PORT "
                                "with {index} in the host")
        endpoints.append(endpoint)
        binds.append(endpoint if _is_address(match["host"]) else f"tcp://{ANY_INTERFACE}:{match['port']}")
    return relocate(topology, endpoints, binds)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


