"""p2ptrain: peer-to-peer training for PyTorch, with no central node.

``p2ptrain.Peer`` puts a training script of your own into a swarm (api.py);
``p2ptrain.Task`` is the protocol of a task for the command line and the
launcher (task.py). Both are imported on first use, so that the command-line
tools answer --help without loading torch.
"""

__version__ = "0.1.0"

_LAZY = {"Peer": ("api", "Peer"), "Task": ("task", "Task"), "Topology": ("topology", "Topology")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'p2ptrain' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


__all__ = ["Peer", "Task", "Topology", "__version__"]
