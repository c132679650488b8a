"""Python API peers of one test, in one process: each exchange in a thread of its own, as the peers of a swarm
run at once (an exchange waits for the neighbours' messages of its round)."""

from __future__ import annotations

import threading
from typing import Iterable


def exchange_together(peers: Iterable, timeout: float = 60) -> None:
    """One ``exchange()`` of every peer at once; re-raises the first failure (a thread's would vanish)."""
    failures: list[BaseException] = []

    def exchange(peer) -> None:
        try:
            peer.exchange()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=exchange, args=(peer,)) for peer in peers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    if failures:
        raise failures[0]
    assert not any(thread.is_alive() for thread in threads), f"an exchange took more than {timeout}s"
