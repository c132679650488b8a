"""Mixing matrices and the spectral numbers that predict how fast gossip agrees.

Convention used everywhere in p2ptrain: ``A[i, j]`` is True when peer i receives
from peer j, and ``W[i, j]`` is the weight peer i gives to peer j's parameters,
so one gossip step is ``x <- W @ x`` with one row per peer.
"""

from __future__ import annotations

import numpy as np

# Rows must sum to one to within this; explicit weights written in a file with
# a dozen decimals pass, a typo does not.
ROW_SUM_TOLERANCE = 1e-9


def metropolis_hastings(adjacency: np.ndarray) -> np.ndarray:
    """W[i, j] = 1 / (1 + max(d_i, d_j)) on edges; the rest of each row stays on i.

    Symmetric and doubly stochastic for any undirected graph, with no global
    knowledge needed: a peer only has to know its neighbours' degrees.
    """
    a = np.asarray(adjacency, dtype=bool)
    if not np.array_equal(a, a.T):
        raise ValueError(
            "Metropolis-Hastings weights need an undirected graph; "
            'use mixing = "uniform" or explicit weights for a directed one'
        )
    degree = a.sum(axis=1)
    w = np.where(a, 1.0 / (1.0 + np.maximum.outer(degree, degree)), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def uniform(adjacency: np.ndarray) -> np.ndarray:
    """Max-degree weights: every edge gets 1 / (1 + max in-degree).

    Doubly stochastic on undirected graphs and on regular directed ones
    (rings, static exponential graphs); row stochastic always.
    """
    a = np.asarray(adjacency, dtype=bool)
    max_degree = int(a.sum(axis=1).max())
    w = np.where(a, 1.0 / (1.0 + max_degree), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def push(adjacency: np.ndarray) -> np.ndarray:
    """Push-sum weights: every sender splits what it holds evenly between itself and its out-neighbours,
    W[i, j] = 1 / (1 + out-degree of j) on edges j -> i and on the diagonal.

    Column stochastic for any graph, and a sender needs to know nothing but its own out-degree; rows
    sum to 1 only when every in-neighbour of a peer has its out-degree (regular graphs). Only push-sum
    can use weights that are not doubly stochastic: it divides by the weight that travels with x."""
    a = np.asarray(adjacency, dtype=bool)
    out_degree = a.sum(axis=0)
    w = np.where(a, 1.0 / (1.0 + out_degree)[np.newaxis, :], 0.0)
    np.fill_diagonal(w, 1.0 / (1.0 + out_degree))
    return w


def lazy(w: np.ndarray) -> np.ndarray:
    """(I + W) / 2: half the weight stays home, and every eigenvalue of W becomes >= 0.

    Weights with an eigenvalue near -1 (explicit weights on a bipartite graph
    can have one) make gossip flip sign every round instead of settling; the
    lazy version cannot, at the price of a slower rate."""
    return (np.eye(len(w)) + w) / 2


def consensus_rate(w: np.ndarray) -> float:
    """rho = ||W - 11^T / n||_2: the factor by which one gossip step shrinks disagreement.

    Exact per-step contraction for doubly stochastic W; for other W it is the
    same norm but no longer a guarantee about the mean.
    """
    n = w.shape[0]
    return float(np.linalg.norm(w - np.full((n, n), 1.0 / n), ord=2))


def is_row_stochastic(w: np.ndarray) -> bool:
    return bool(np.all(w >= 0) and np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=ROW_SUM_TOLERANCE))


def is_column_stochastic(w: np.ndarray) -> bool:
    return bool(np.all(w >= 0) and np.allclose(w.sum(axis=0), 1.0, rtol=0, atol=ROW_SUM_TOLERANCE))


def is_doubly_stochastic(w: np.ndarray) -> bool:
    return is_row_stochastic(w) and bool(
        np.allclose(w.sum(axis=0), 1.0, rtol=0, atol=ROW_SUM_TOLERANCE)
    )
