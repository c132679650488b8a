"""The Python API used wrongly or left open: refused before anything opens, with the fix; nothing held
after (the port binds again); the training script's own settings (threads, logging, SIGTERM) kept."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import p2ptrain
from p2ptrain.config import ConfigError
from p2ptrain.ports import free_port_block
from p2ptrain.replica import exchanged_tensors
from p2ptrain.topology import dump_topology, generate

from .together import exchange_together

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def alone():
    """A topology of one peer: every exchange completes at once, with nobody to wait for."""
    return generate("complete", 1, base_port=free_port_block(1))


def open_peer(topology, tmp_path, model=None, optimizer=None, **options):
    model = model if model is not None else torch.nn.Linear(2, 1)
    return p2ptrain.Peer(topology, model, optimizer, peer="p0", insecure=True, out=str(tmp_path / "out"),
                         overwrite=True, **options)


def test_a_scheduler_given_as_optimizer_is_refused_before_the_port_is_taken(alone, tmp_path):
    model = torch.nn.Linear(2, 1)
    scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=0.1), 1)
    with pytest.raises(TypeError, match="not a StepLR .*pass its optimizer"):
        open_peer(alone, tmp_path, model, scheduler)
    open_peer(alone, tmp_path, model).close()  # the port is free


def test_a_peer_never_closed_releases_its_port_when_freed(alone, tmp_path):
    peer = open_peer(alone, tmp_path)
    del peer
    gc.collect()  # once hung for good: the context waited for sockets nobody would close
    open_peer(alone, tmp_path).close()


def test_options_the_script_decides_are_refused_rather_than_ignored(alone, tmp_path):
    with pytest.raises(ConfigError, match="lr, momentum: under the Python API your optimizer's learning rate"):
        open_peer(alone, tmp_path, lr=0.5, momentum=0.9)


def test_a_peer_is_refused_inside_a_running_event_loop_with_the_fix(alone, tmp_path):
    async def inside():
        open_peer(alone, tmp_path)

    with pytest.raises(RuntimeError, match="outside it"):
        asyncio.run(inside())


def test_torch_threads_and_the_scripts_logging_are_left_as_they_are(alone, tmp_path):
    root, ours = logging.getLogger(), logging.getLogger("p2ptrain")
    handlers, threads = list(root.handlers), torch.get_num_threads()
    before = (ours.level, list(ours.handlers), ours.propagate)
    torch.set_num_threads(2)
    try:
        with open_peer(alone, tmp_path, log_level="WARNING"):
            assert torch.get_num_threads() == 2 and root.handlers == handlers
            assert ours.level == logging.WARNING and len(ours.handlers) == len(before[1]) + 1
        with open_peer(alone, tmp_path, threads=1):  # unless threads= is given
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        ours.setLevel(before[0])  # setLevel also clears the loggers' cached levels
        ours.handlers, ours.propagate = before[1], before[2]  # the other tests' peers log through the root


def test_attach_is_refused_twice_and_after_close_and_exchange_after_the_last_round(alone, tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    peer = open_peer(alone, tmp_path, model, optimizer, rounds=2)
    with pytest.raises(RuntimeError, match="already attached"):
        peer.attach(optimizer)
    peer.close()
    with pytest.raises(RuntimeError, match="closed"):
        peer.attach(optimizer)
    with open_peer(alone, tmp_path, rounds=1) as peer:
        peer.exchange(loss=torch.tensor(0.25))  # a one-element tensor is a number for the metrics
        assert peer.done and peer.node.last["loss"] == 0.25
        with pytest.raises(RuntimeError, match="made its 1 rounds"):
            peer.exchange()
        with pytest.raises(TypeError, match="loss must be a number"):
            peer.exchange(loss="low")


def test_integer_parameters_stay_local_like_integer_buffers():
    model = torch.nn.Linear(2, 1)
    model.count = torch.nn.Parameter(torch.tensor([3, 7]), requires_grad=False)
    model.register_buffer("steps", torch.tensor(0))
    assert set(exchanged_tensors(model)) == {"weight", "bias"}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_ends_a_script_through_its_with_block_which_writes_the_result(alone, tmp_path):
    # torchrun stops every rank with SIGTERM when one fails: each should still leave its model and result.
    (tmp_path / "alone.toml").write_text(dump_topology(alone))
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import signal, torch, p2ptrain
        with p2ptrain.Peer({str(tmp_path / "alone.toml")!r}, torch.nn.Linear(2, 1), peer="p0", insecure=True,
                           out={str(tmp_path / "out")!r}):
            print("open", flush=True)
            signal.pause()  # until the test's SIGTERM
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert process.stdout.readline() == "open\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "out" / "model.pt").exists()


class RunningMean(torch.nn.Module):
    """A buffer updated by assignment, as many modules write an exponential average."""

    def __init__(self, start: float):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        self.register_buffer("mean", torch.full((2,), start))

    def forward(self, x):
        self.mean = 0.5 * self.mean + 0.5 * x.mean(0)  # a new tensor each time
        return self.linear(x)


def test_a_buffer_given_a_new_tensor_is_the_one_sent_and_mixed(tmp_path):
    topology = generate("complete", 2, base_port=free_port_block(2))
    models = {"p0": RunningMean(0.0), "p1": RunningMean(4.0)}
    peers = {peer_id: p2ptrain.Peer(topology, model, peer=peer_id, insecure=True, out=str(tmp_path / peer_id),
                                    recv_timeout=20) for peer_id, model in models.items()}
    try:
        for peer_id, model in models.items():
            model(torch.full((3, 2), 2.0))  # p0's mean becomes 1, p1's 3
        exchange_together(peers.values())
        for model in models.values():  # both at the average, 2, in the module's current buffer
            assert torch.equal(model.mean, torch.full((2,), 2.0))
    finally:
        for peer in peers.values():
            peer.close()


def test_sigterm_stays_the_peers_while_any_is_open_and_comes_back_when_the_last_goes(tmp_path):
    pair = generate("complete", 2, base_port=free_port_block(2))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    first = p2ptrain.Peer(pair, torch.nn.Linear(2, 1), peer="p0", insecure=True, out=str(tmp_path / "p0"))
    second = p2ptrain.Peer(pair, torch.nn.Linear(2, 1), peer="p1", insecure=True, out=str(tmp_path / "p1"))
    ours = signal.getsignal(signal.SIGTERM)
    assert ours is not signal.SIG_DFL
    first.close()
    assert signal.getsignal(signal.SIGTERM) is ours  # the second is still open
    del second  # never closed: freed, it gives SIGTERM back too
    gc.collect()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
