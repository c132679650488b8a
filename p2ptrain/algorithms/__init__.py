"""Algorithms: pure tensor math, one round at a time."""

from .base import Algorithm
from .gossip import Gossip, effective_weights, mix

ALGORITHMS = ("gossip",)

__all__ = ["ALGORITHMS", "Algorithm", "Gossip", "effective_weights", "mix"]
