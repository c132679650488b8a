"""p2ptrain: peer-to-peer training for PyTorch with no central node."""

__version__ = "0.1.0"
