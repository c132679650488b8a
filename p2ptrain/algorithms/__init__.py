"""Algorithms: pure tensor math, one round at a time."""

from .admm import ADMM, exact_solver, inexact_solver
from .base import Algorithm, Diverged
from .gossip import Gossip, effective_weights, mix

ALGORITHMS = ("gossip", "admm")

__all__ = ["ADMM", "ALGORITHMS", "Algorithm", "Diverged", "Gossip", "effective_weights", "exact_solver",
           "inexact_solver", "mix"]
