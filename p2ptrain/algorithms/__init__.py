"""Algorithms: pure tensor math, one round at a time."""

from ..choices import AGGREGATORS, ALGORITHMS, AggregatorError, check_aggregator
from .admm import ADMM
from .base import Algorithm, Diverged
from .choco import Choco
from .gossip import Gossip, effective_weights, mix
from .pushsum import PushSum
from .robust import clipped_mix, trimmed_mean
from .tracking import GradientTracking

__all__ = ["ADMM", "AGGREGATORS", "ALGORITHMS", "AggregatorError", "Algorithm", "Choco", "Diverged", "Gossip",
           "GradientTracking", "PushSum", "check_aggregator", "clipped_mix", "effective_weights", "mix",
           "trimmed_mean"]
