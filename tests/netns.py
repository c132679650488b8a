"""Two network hosts on one machine: network namespaces joined by one veth link that a test can cut.

Each host is a namespace with its own loopback, its own addresses and its own
port space. The address its peers listen on sits on its loopback, not on the
link: taking the link down then cuts traffic between the hosts only, while
peers on the same host keep talking (an address on the link itself can lose
its local route when the link goes down). Each host reaches the other's
address through a route via the link; Linux deletes such routes when the link
goes down and does not bring them back with it, so ``restore`` adds them again.

Nothing is created, addressed or routed in the root namespace: the veth pair
is made directly inside the two namespaces, and deleting the namespaces
deletes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

# Addresses from 198.18.0.0/15, reserved for benchmarking (RFC 2544) and never routed
# on the internet. They exist only inside a run's own namespaces, so runs side by
# side can use the same ones.
LINK_PREFIX = 30  # the two ends of the link: 198.18.0.1 and 198.18.0.2


class NetnsUnavailable(RuntimeError):
    """This machine, or this user, cannot make network namespaces; the message says what is missing."""


class IpError(RuntimeError):
    pass


def ip(*args: str, namespace: str | None = None) -> str:
    """Run ``ip [-n NAMESPACE] ARGS...``; its output, or IpError with its message."""
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, check=False)
    if result.returncode:
        raise IpError(f"`{' '.join(command)}` failed: {result.stderr.strip() or f'exit code {result.returncode}'}")
    return result.stdout


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str  # where its peers listen: on its loopback, so the link's state cannot take it away
    interface: str  # its end of the link
    link_address: str  # that end's address: the next hop the other host routes through

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def link_bytes_sent(self) -> int:
        """Bytes this host's end of the link has sent so far."""
        shown = ip("-json", "-statistics", "link", "show", "dev", self.interface, namespace=self.namespace)
        (link,) = json.loads(shown)
        return link["stats64"]["tx"]["bytes"]


class TwoHosts:
    """Hosts ``a`` (198.18.1.1) and ``b`` (198.18.2.1), joined by a veth link 198.18.0.1 -- 198.18.0.2."""

    def __init__(self, name: str):
        self.a = Host(f"{name}-a", "198.18.1.1", "link-a", "198.18.0.1")
        self.b = Host(f"{name}-b", "198.18.2.1", "link-b", "198.18.0.2")
        self.made: list[str] = []  # namespaces made so far, for remove()

    @classmethod
    def create(cls, name: str) -> TwoHosts:
        """Make both namespaces and the link between them, or raise NetnsUnavailable saying why not.

        ``name`` must be unique on the machine (namespaces are global): include the pid."""
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the `ip` command (iproute2) is not installed; install it "
                                   "(apt-get install iproute2) and run the test as root")
        if os.geteuid() != 0:
            raise NetnsUnavailable("making network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); "
                                   "run the test as root, e.g. sudo python3 -m pytest tests/test_netns.py")
        hosts = cls(name)
        try:
            hosts._build()
        except BaseException:
            hosts.remove()
            raise
        return hosts

    def _build(self) -> None:
        for host in (self.a, self.b):
            try:
                ip("netns", "add", host.namespace)
            except IpError as error:
                raise NetnsUnavailable(f"{error}; an unprivileged container cannot make network namespaces: "
                                       "run the test as root on a host or in a privileged container") from None
            self.made.append(host.namespace)
        try:
            # Made inside a and moved straight into b: neither end ever exists in the root namespace.
            ip("link", "add", self.a.interface, "type", "veth", "peer", "name", self.b.interface,
               "netns", self.b.namespace, namespace=self.a.namespace)
            # `ip netns exec` also needs a mount namespace of its own (it remounts /sys there).
            ip("netns", "exec", self.a.namespace, "true")
        except IpError as error:
            raise NetnsUnavailable(f"{error}; the kernel or the container does not allow veth links or `ip netns "
                                   "exec`: run the test as root on a host or in a privileged container") from None
        for host in (self.a, self.b):
            ip("link", "set", "lo", "up", namespace=host.namespace)  # peers on one host talk over loopback
            ip("addr", "add", f"{host.address}/32", "dev", "lo", namespace=host.namespace)
            ip("addr", "add", f"{host.link_address}/{LINK_PREFIX}", "dev", host.interface, namespace=host.namespace)
            ip("link", "set", host.interface, "up", namespace=host.namespace)
        self._route()

    def _route(self) -> None:
        """Route each host's address to the other over the link, and check the kernel uses the route."""
        for here, there in ((self.a, self.b), (self.b, self.a)):
            # replace, not add: after a cut one side still has its route (the link only lost its carrier).
            ip("route", "replace", f"{there.address}/32", "via", there.link_address, "dev", here.interface,
               namespace=here.namespace)
            chosen = ip("route", "get", there.address, namespace=here.namespace)
            if f"dev {here.interface}" not in chosen:
                raise IpError(f"{here.namespace} routes {there.address} as `{chosen.strip()}`, not over the link")

    def cut(self) -> None:
        """Take host a's end of the link down: no packet passes between the hosts until restore()."""
        ip("link", "set", self.a.interface, "down", namespace=self.a.namespace)

    def restore(self) -> None:
        """Bring the link back up, with the routes its going down deleted."""
        ip("link", "set", self.a.interface, "up", namespace=self.a.namespace)
        self._route()

    def remove(self) -> None:
        """Delete the namespaces (and with them the link). Safe to call more than once."""
        errors = []
        while self.made:
            namespace = self.made.pop()
            try:
                ip("netns", "delete", namespace)
            except IpError as error:
                errors.append(str(error))
        if errors:
            raise IpError("; ".join(errors))
