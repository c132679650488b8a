"""Pure gossip averaging over real sockets, measured: how fast do peers agree, against the prediction rho?

Each peer starts from its own model (--init per-peer) and takes no gradient
step (--local-steps 0), so a round is exactly x <- W x done by the peers over
ZeroMQ. All peers run in this process over TCP loopback (inprocess.py), and
the disagreement ||X - mean(X)|| is read from their initial and final models.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np

from .config import PeerConfig
from .inprocess import run_in_process
from .replica import build_replica
from .results import flat_parameters, load_model
from .topology import Topology


def averaging_config(rounds: int, seed: int = 0) -> PeerConfig:
    return PeerConfig(topology="-", rounds=rounds, local_steps=0, init="per-peer", model="logreg",
                      seed=seed, run_id=f"averaging-{rounds}", eval_every=rounds, log_every=rounds,
                      log_level="WARNING", insecure=True).validate()  # one process on loopback: no keys


def initial_parameters(topology: Topology, config: PeerConfig) -> np.ndarray:
    """Row i: peer i's starting parameters, built exactly as the peer builds them."""
    return np.stack([flat_parameters(build_replica(config, topology, pid).model.state_dict()).cpu().numpy()
                     for pid in topology.ids])


def run_averaging(topology: Topology, rounds: int, out: Path, seed: int = 0) -> np.ndarray:
    """Row i: peer i's parameters after ``rounds`` rounds of averaging over the topology's sockets."""
    config = averaging_config(rounds, seed)
    codes = asyncio.run(run_in_process(topology, config, out))
    failed = {pid: code for pid, code in codes.items() if code != 0}
    if failed:
        raise RuntimeError(f"peers failed: {failed}; see their metrics in {out}")
    return np.stack([flat_parameters(load_model(out / pid)).numpy() for pid in topology.ids])


def disagreement(x: np.ndarray) -> float:
    return float(np.linalg.norm(x - x.mean(axis=0)))


def measured_rate(topology: Topology, out: Path, target: float = 1e-3, seed: int = 0) -> tuple[float, int, int]:
    """The per-round contraction between two runs of R/2 and R rounds, where rho^R is about ``target``.

    Late rounds are measured, not the first: there the slowest mode, which
    rho describes, has left the faster ones behind. Returns (rate, R/2, R).
    """
    rho = topology.consensus_rate
    late = max(2, math.ceil(math.log(target) / math.log(rho))) if 0 < rho < 1 else 2
    early = late // 2
    a = disagreement(run_averaging(topology, early, out / f"r{early}", seed))
    b = disagreement(run_averaging(topology, late, out / f"r{late}", seed))
    return (b / a) ** (1 / (late - early)), early, late
