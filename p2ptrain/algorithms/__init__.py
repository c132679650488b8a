"""Algorithms: pure tensor math, one round at a time."""

from .admm import ADMM
from .base import Algorithm, Diverged
from .gossip import Gossip, effective_weights, mix
from .robust import AGGREGATORS, AggregatorError, check_aggregator, clipped_mix, trimmed_mean
from ..choices import ALGORITHMS

__all__ = ["ADMM", "AGGREGATORS", "ALGORITHMS", "AggregatorError", "Algorithm", "Diverged", "Gossip",
           "check_aggregator", "clipped_mix", "effective_weights", "mix",
           "trimmed_mean"]
