"""A Node driven without sockets or processes: an in-memory transport and a clock the test moves.

The neighbours are scripted: the test delivers their messages (at a time of
its choosing, from the sender their connection proves) and reads what the
Node sent. Deadlines pass in no time, so every wait is checked exactly on the
Node's clock; the rules are those of PROTOCOL.md sections 4, 6 and 7.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgpack
import pytest
import torch
from torch.utils.data import TensorDataset

from p2ptrain import wire
from p2ptrain.config import ConfigError, PeerConfig
from p2ptrain.gather import DRAIN_LIMIT, DRAIN_SHARE, Deadlines
from p2ptrain.memory import MemoryNetwork
from p2ptrain.node import Node
from p2ptrain.replica import Replica, agreement, build_algorithm
from p2ptrain.topology import PeerSpec, Topology, build_topology, generate
from p2ptrain.training import Batches, LocalTrainer

RUN = "unit"
RECV_TIMEOUT = 1.5  # binary fractions: waits add up exactly on the clock
STARTUP_TIMEOUT = 4.0


class Vector(torch.nn.Module):
    """A model of one parameter vector, so mixed values are easy to predict."""

    def __init__(self, value: float, size: int = 2):
        super().__init__()
        self.x = torch.nn.Parameter(torch.full((size,), value, dtype=torch.float64))


def make_node(tmp_path: Path, topology: Topology, network: MemoryNetwork, peer_id: str = "p0", value: float = 0.0,
              size: int = 2, **options) -> Node:
    """A started Node of ``topology`` on ``network``, its model holding ``value`` everywhere."""
    options = {"run_id": RUN, "out": str(tmp_path / peer_id), "recv_timeout": RECV_TIMEOUT,
               "startup_timeout": STARTUP_TIMEOUT, "rounds": 10, "eval_every": 1000, "log_every": 1} | options
    config = PeerConfig(topology=topology.name, peer=peer_id, **options).validate()
    model = Vector(value, size)
    replica = Replica(peer_id, None, model, None, build_algorithm(config, topology, peer_id, model),
                      torch.device("cpu"), config.lr_at, config.local_steps, agreement(config, None))
    node = Node(config, topology, replica, network.transport(peer_id, topology.out_neighbours(peer_id)),
                clock=network.clock, wall_clock=lambda: 1_700_000_000 + network.clock())
    node.start()
    return node


def params(node: Node, sender: str, round_: int, value: float) -> list:
    """A neighbour's parameters for ``round_``, as it would send them to ``node``."""
    return wire.encode(kind="params", sender=sender, run_id=RUN, round=round_, fingerprint=node.fingerprint,
                       tensors={"x": torch.full((2,), value, dtype=torch.float64)},
                       topology=node.topology_digest(round_))


def send(network: MemoryNetwork, node: Node, sender: str, round_: int, value: float = 1.0, at: float | None = None):
    network.deliver(node.id, params(node, sender, round_, value), sender=sender, at=at)


def x_of(node: Node) -> torch.Tensor:
    return node.model.x.detach()


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


@pytest.fixture
def complete3() -> Topology:
    return generate("complete", 3)


# ---- synchronous rounds ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_round_whose_neighbours_all_arrived_waits_nothing_and_mixes_them(tmp_path, network, complete3):
    node = make_node(tmp_path, complete3, network)
    send(network, node, "p1", 0, 3.0)
    send(network, node, "p2", 0, 6.0)
    await node.exchange(0)
    assert node.last["wait_seconds"] == 0 and network.clock() == 0
    assert (node.last["heard"], node.last["missing"]) == (["p1", "p2"], [])
    assert torch.allclose(x_of(node), torch.full((2,), 3.0, dtype=torch.float64), rtol=1e-12, atol=0)  # W = 1/3
    as_a_neighbour_reads_it = wire.Contract(RUN, node.fingerprint, frozenset({"p0"}), node.contract.specs)
    for neighbour in ("p1", "p2"):
        (sent,) = network.collect(neighbour)
        message = wire.decode(sent.frames, as_a_neighbour_reads_it)
        assert (message.kind, message.round, message.tensors["x"].tolist()) == ("params", 0, [0.0, 0.0])
    assert node.last["bytes_sent"] == node.last["bytes_received"] > 0  # two messages of one layout each way


@pytest.mark.asyncio
async def test_a_round_ends_when_the_last_awaited_neighbour_arrives(tmp_path, network, complete3):
    node = make_node(tmp_path, complete3, network)
    send(network, node, "p1", 0)
    send(network, node, "p2", 0, at=0.75)
    await node.exchange(0)
    assert node.last["wait_seconds"] == 0.75 and node.last["missing"] == []


@pytest.mark.asyncio
async def test_a_missing_neighbour_costs_exactly_one_deadline_and_is_not_waited_for_again(
        tmp_path, network, complete3, caplog):
    node = make_node(tmp_path, complete3, network)
    send(network, node, "p1", 0)
    send(network, node, "p2", 0)
    await node.exchange(0)
    with caplog.at_level(logging.INFO, logger="p2ptrain.peer"):
        send(network, node, "p1", 1)  # p2 stops sending
        await node.exchange(1)
        assert node.last["wait_seconds"] == RECV_TIMEOUT and network.clock() == RECV_TIMEOUT
        assert node.last["missing"] == ["p2"] and node.membership.suspected == {"p2"}
        assert node.last["timed_out"] == ["p2"]  # the round waited for p2 until its deadline
        send(network, node, "p1", 2)
        await node.exchange(2)
        assert node.last["wait_seconds"] == 0 and node.last["missing"] == ["p2"] and node.last["timed_out"] == []
        send(network, node, "p1", 3)
        send(network, node, "p2", 3)  # back
        await node.exchange(3)
    assert node.last["heard"] == ["p1", "p2"] and node.membership.suspected == set()
    assert "round 1: no parameters from p2 within 1.5s; going on without it" in caplog.text
    assert "round 3: heard from p2 again" in caplog.text


@pytest.mark.asyncio
async def test_the_first_rounds_as_many_as_the_diameter_wait_the_startup_deadline(tmp_path, network):
    ring5 = generate("ring", 5)  # diameter 2; p0 hears p1 and p4
    assert ring5.diameter == 2
    node = make_node(tmp_path, ring5, network)
    send(network, node, "p1", 0)
    await node.exchange(0)  # p4 not up yet
    assert node.last["wait_seconds"] == STARTUP_TIMEOUT and node.last["missing"] == ["p4"]
    send(network, node, "p4", 1, at=network.clock())
    await node.exchange(1)  # now p1 is late, in a round still within the diameter
    assert node.last["wait_seconds"] == STARTUP_TIMEOUT and node.last["missing"] == ["p1"]
    send(network, node, "p1", 2)
    await node.exchange(2)  # p4 missing again: the ordinary deadline
    assert node.last["wait_seconds"] == RECV_TIMEOUT and node.last["missing"] == ["p4"]


def test_deadlines_follow_the_start_round_and_joining():
    deadlines = Deadlines(RECV_TIMEOUT, STARTUP_TIMEOUT, startup_rounds=2)
    assert [deadlines.of(r) for r in range(3)] == [STARTUP_TIMEOUT, STARTUP_TIMEOUT, RECV_TIMEOUT]
    resumed = Deadlines(RECV_TIMEOUT, STARTUP_TIMEOUT, 2, start_round=20)
    assert [resumed.of(r) for r in (20, 21, 22)] == [STARTUP_TIMEOUT, STARTUP_TIMEOUT, RECV_TIMEOUT]
    assert Deadlines(RECV_TIMEOUT, STARTUP_TIMEOUT, 2, start_round=20, joined=True).of(20) == RECV_TIMEOUT


@pytest.mark.asyncio
async def test_a_neighbour_that_moved_on_is_not_waited_for(tmp_path, network, complete3):
    node = make_node(tmp_path, complete3, network)
    send(network, node, "p1", 0)
    send(network, node, "p2", 1)  # its round-0 message will never come: it was sent before p0 was up
    await node.exchange(0)
    assert node.last["wait_seconds"] == 0 and node.last["missing"] == ["p2"]
    send(network, node, "p1", 1)
    await node.exchange(1)
    assert node.last["heard"] == ["p1", "p2"]


@pytest.mark.asyncio
async def test_a_neighbour_missing_because_it_moved_on_is_said_to_have_moved_on(tmp_path, network, complete3, caplog):
    node = make_node(tmp_path, complete3, network)
    send(network, node, "p1", 0)
    send(network, node, "p2", 2)  # p2 is two rounds ahead: its rounds 0 and 1 were sent before p0 was up
    await node.exchange(0)  # p2 was heard from in this round: missing, not suspected
    send(network, node, "p1", 1)
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        await node.exchange(1)  # nothing new from p2: it becomes suspected, not having been waited for
    assert node.last["wait_seconds"] == 0 and node.last["missing"] == ["p2"]
    assert "round 1: p2 has sent a later round, so its message for this one is not coming" in caplog.text
    assert "no parameters from p2 within" not in caplog.text


@pytest.mark.asyncio
async def test_a_round_reads_at_most_drain_limit_messages_beyond_those_it_waits_for(tmp_path, network, complete3):
    node = make_node(tmp_path, complete3, network)
    send(network, node, "p1", 0)
    send(network, node, "p2", 0)
    for _ in range(DRAIN_LIMIT + 44):
        network.deliver("p0", [b"garbage"])
    await node.exchange(0)
    assert node.stats.rejected == {"malformed_header": DRAIN_LIMIT}  # the rest waits for the next round
    send(network, node, "p1", 1)
    send(network, node, "p2", 1)
    await node.exchange(1)
    assert node.stats.rejected == {"malformed_header": DRAIN_LIMIT + 44} and node.last["missing"] == []


@pytest.mark.asyncio
async def test_a_round_stops_reading_beyond_its_neighbours_after_its_share_of_the_deadline(tmp_path, network,
                                                                                          complete3):
    node = make_node(tmp_path, complete3, network)
    send(network, node, "p1", 0)
    send(network, node, "p2", 0)
    for _ in range(100):
        network.deliver("p0", [b"garbage"])
    accept = node.gatherer.accept

    def slowly(received):  # as a header built to be slow to parse is: here 1/8 s each, on the node's clock
        network.clock.advance_to(network.clock() + 0.125)
        return accept(received)

    node.gatherer.accept = slowly
    await node.exchange(0)
    # p1 and p2 were read by 0.25 s; then reading goes on until DRAIN_SHARE of RECV_TIMEOUT has passed.
    assert DRAIN_SHARE * RECV_TIMEOUT == 0.375 and node.last["heard"] == ["p1", "p2"]
    assert node.stats.rejected == {"malformed_header": 4} and network.clock() == 0.25 + 4 * 0.125


# ---- asynchronous rounds -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_rounds_mix_each_neighbours_newest_within_the_staleness_bound(tmp_path, network, complete3,
                                                                                  caplog):
    node = make_node(tmp_path, complete3, network, mode="async", max_staleness=2)
    send(network, node, "p1", 0)
    send(network, node, "p2", 0, at=0.5)
    await node.exchange(0)  # the first round waits until every neighbour was heard once
    assert node.last["wait_seconds"] == 0.5 and node.last["staleness"] == {"p1": 0, "p2": 0}
    await node.exchange(1)  # nothing new: no wait, the round-0 messages are one round old
    assert node.last["wait_seconds"] == 0 and node.last["staleness"] == {"p1": 1, "p2": 1}
    send(network, node, "p1", 2)
    send(network, node, "p1", 1)  # overtaken: older than what p1 already sent
    await node.exchange(2)
    assert node.last["staleness"] == {"p1": 0, "p2": 2} and node.stats.older_dropped == 1
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        await node.exchange(3)  # p2's round 0 is now 3 rounds old
    assert node.last["staleness"] == {"p1": 1} and node.last["missing"] == ["p2"]
    assert node.last["wait_seconds"] == 0 and network.clock() == 0.5
    assert "round 3: nothing from p2 newer than 2 rounds; mixing without it" in caplog.text


@pytest.mark.asyncio
async def test_an_async_peer_too_far_behind_jumps_to_its_neighbours_round(tmp_path, network, complete3, caplog):
    node = make_node(tmp_path, complete3, network, mode="async", max_staleness=2, rounds=100)
    send(network, node, "p1", 0)
    send(network, node, "p2", 0)
    await node.exchange(0)
    assert node.gatherer.next_round(0) == 1
    send(network, node, "p1", 3)  # 2 rounds ahead of round 1: within the bound
    await node.exchange(1)
    assert node.gatherer.next_round(1) == 2
    send(network, node, "p2", 9)
    await node.exchange(2)
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        assert node.gatherer.next_round(2) == 9
    assert "round 3 is more than 2 rounds behind the neighbours (newest: p1@3,p2@9); jumping to round 9" in caplog.text


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_round_past_the_runs_end_is_believed_in_nothing(tmp_path, network, complete3, mode):
    node = make_node(tmp_path, complete3, network, mode=mode, max_staleness=2)  # a run of 10 rounds
    send(network, node, "p1", 0, 3.0)
    send(network, node, "p2", 10, 600.0)  # no honest p2 sends round 10 of a 10-round run
    send(network, node, "p2", 0, 6.0, at=0.5)
    await node.exchange(0)
    # p2 is still awaited (it has not moved on, nor been heard), its round-10 parameters are not mixed,
    # and the next round is the next one (an async peer does not jump to the end of the run).
    assert node.last["wait_seconds"] == 0.5 and node.last["heard"] == ["p1", "p2"]
    assert torch.equal(x_of(node), torch.full((2,), 3.0, dtype=torch.float64))  # (0 + 3 + 6) / 3
    assert node.stats.too_far_ahead == 1 and node.gatherer.next_round(0) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_round_past_the_runs_end_does_not_make_a_suspected_neighbour_awaited(tmp_path, network, complete3,
                                                                                    mode):
    node = make_node(tmp_path, complete3, network, mode=mode, absent="p2")  # p2 is not running
    send(network, node, "p1", 0)
    network.deliver("p0", params(node, "p2", 10, 1.0))  # in p2's name, on a swarm without keys
    await node.exchange(0)
    send(network, node, "p1", 1)
    await node.exchange(1)
    assert node.last["wait_seconds"] == 0 and node.membership.suspected == {"p2"}


# ---- joining a running swarm -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_state_request_is_answered_and_the_joiner_continues_from_the_given_round(tmp_path, network, caplog):
    pair = generate("complete", 2)
    running = make_node(tmp_path, pair, network, "p0", value=5.0, absent="p1")
    request = wire.encode(kind="state_request", sender="p1", run_id=RUN, round=0, fingerprint=running.fingerprint,
                          tensors={}, topology=running.topology_digest(0))
    network.deliver("p0", request, sender="p1")
    with caplog.at_level(logging.INFO, logger="p2ptrain.peer"):
        await running.exchange(3)
    assert "answered a state request from p1: continue from round 4" in caplog.text

    joiner = make_node(tmp_path, pair, network, "p1", value=0.0, join=True)
    assert await joiner.join() == 4
    assert (joiner.start_round, joiner.rounds_completed) == (4, 4)
    assert torch.equal(x_of(joiner), torch.full((2,), 5.0, dtype=torch.float64))
    assert joiner.stats.stale_dropped == 1  # p0's round-3 parameters, read before the answer
    asked = network.collect("p0")
    assert asked and all(wire.decode(a.frames, running.contract).kind == "state_request" for a in asked)
    await joiner.exchange(4)  # p0's round 4 is not there: a joiner waits the ordinary deadline
    assert joiner.last["wait_seconds"] == RECV_TIMEOUT and joiner.last["round"] == 4


@pytest.mark.asyncio
async def test_a_joiner_of_a_swarm_sending_half_precision_fragments_takes_the_whole_model_unrounded(
        tmp_path, network):
    pair, layout = generate("complete", 2), {"fragments": 2, "wire_dtype": "bfloat16"}
    value = 5.0 + 2**-20  # not a bfloat16 value: a rounded state would show
    running = make_node(tmp_path, pair, network, "p0", value=value, absent="p1", **layout)
    joiner = make_node(tmp_path, pair, network, "p1", value=0.0, join=True, **layout)
    network.deliver("p0", wire.encode(kind="state_request", sender="p1", run_id=RUN, round=0,
                                      fingerprint=running.fingerprint, tensors={},
                                      topology=running.topology_digest(0)), sender="p1")
    await running.exchange(3)
    answers = network.collect("p1")  # p0's round-3 fragment and its state answer, taken to look at
    state = next(m for m in (wire.decode(a.frames, joiner.contract) for a in answers) if m.kind == "state")
    assert set(state.tensors) == {"x"} and state.tensors["x"].dtype == torch.float64  # whole, in its own precision
    for answer in answers:  # back into p1's mailbox, for the joiner to read
        network.deliver("p1", answer.frames, sender="p0")
    assert await joiner.join() == 4
    assert torch.equal(x_of(joiner), torch.full((2,), value, dtype=torch.float64))


@pytest.mark.asyncio
async def test_a_join_nobody_answers_ends_at_the_startup_deadline(tmp_path, network):
    joiner = make_node(tmp_path, generate("complete", 2), network, "p1", join=True, trace_every=1)
    with pytest.raises(ConfigError, match="no answer from p0 within 4.0s"):
        await joiner.join()
    assert network.clock() == STARTUP_TIMEOUT
    assert len(network.collect("p0")) == STARTUP_TIMEOUT / 0.5  # asked again every half second
    # Refused before any round, it takes back what it wrote: the retry the message suggests can start there.
    joiner.finish("failed")
    assert not any((tmp_path / "p1").iterdir())
    make_node(tmp_path, generate("complete", 2), MemoryNetwork(), "p1")


@pytest.mark.asyncio
async def test_a_state_answer_past_the_runs_end_is_not_taken(tmp_path, network):
    joiner = make_node(tmp_path, generate("complete", 2), network, "p1", join=True)  # a run of 10 rounds
    network.deliver("p1", state_answer(joiner, "p0", 11, 9.0), sender="p0")  # no honest answer is past 10
    network.deliver("p1", state_answer(joiner, "p0", 7, 5.0), sender="p0", at=0.25)
    assert await joiner.join() == 7 and joiner.stats.too_far_ahead == 1
    assert torch.equal(x_of(joiner), torch.full((2,), 5.0, dtype=torch.float64))


@pytest.mark.asyncio
async def test_a_state_answer_from_staged_buffers_is_copied_as_it_is_sent(tmp_path, network):
    # Staged frames live in buffers the next round refills; a lent answer still queued would carry them.
    running = make_node(tmp_path, generate("complete", 2), network, "p0", absent="p1", staging="always")
    sent, send_ = [], running.transport.send

    def recording(peer_id, frames, copy=False):
        sent.append((wire.decode_header(frames[0])["kind"], copy))
        return send_(peer_id, frames, copy)

    running.transport.send = recording
    network.deliver("p0", wire.encode(kind="state_request", sender="p1", run_id=RUN, round=0,
                                      fingerprint=running.fingerprint, tensors={},
                                      topology=running.topology_digest(0)), sender="p1")
    await running.exchange(3)
    assert sent == [("params", True), ("state", True)]


@pytest.mark.asyncio
async def test_state_requests_go_every_half_second_however_many_messages_are_read_meanwhile(tmp_path, network):
    joiner = make_node(tmp_path, generate("complete", 2), network, "p1", join=True, rounds=1000)
    for round_ in range(200, 300):  # p0's parameters, queued towards p1 before it was up
        send(network, joiner, "p0", round_, 5.0)
    network.deliver("p1", state_answer(joiner, "p0", 301, 5.0), sender="p0", at=0.75)
    assert await joiner.join() == 301 and network.clock() == 0.75
    asked = [wire.decode_header(m.frames[0])["kind"] for m in network.collect("p0")]
    assert asked == ["state_request"] * 2  # at 0 and at 0.5 s, not once per message read


@pytest.mark.asyncio
async def test_a_joining_peer_answers_no_state_request_until_it_has_taken_a_state(tmp_path, network, complete3):
    joiner = make_node(tmp_path, complete3, network, "p1", value=0.0, join=True, rounds=100)
    request = wire.encode(kind="state_request", sender="p2", run_id=RUN, round=0, fingerprint=joiner.fingerprint,
                          tensors={}, topology=joiner.topology_digest(0))
    network.deliver("p1", request, sender="p2")  # p2 joins too, at the same time
    network.deliver("p1", state_answer(joiner, "p0", 41, 5.0), sender="p0", at=0.25)
    assert await joiner.join() == 41
    # p2 was not handed p1's untrained model (nor its round 1) to start from.
    sent_to_p2 = [wire.decode_header(m.frames[0])["kind"] for m in network.collect("p2")]
    assert "state" not in sent_to_p2
    network.deliver("p1", request, sender="p2")  # p2 asks again, as a joiner does every half second
    send(network, joiner, "p0", 41)
    await joiner.exchange(41)
    answers = [m for m in (wire.decode(a.frames, wire.Contract(RUN, joiner.fingerprint, frozenset({"p1"}),
                                                                joiner.contract.specs)) for a in network.collect("p2"))
               if m.kind == "state"]
    assert [(a.round, a.tensors["x"].tolist()) for a in answers] == [(42, [5.0, 5.0])]


# ---- who sent it -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_message_naming_another_sender_than_its_connection_proves_is_rejected(tmp_path, complete3):
    network = MemoryNetwork(secure=True)
    node = make_node(tmp_path, complete3, network)
    network.deliver("p0", params(node, "p1", 0, 1000.0), sender="p2")  # p2's key, p1's name
    send(network, node, "p1", 0, 3.0)
    send(network, node, "p2", 0, 6.0)
    await node.exchange(0)
    assert node.stats.rejected == {"impersonation": 1} and node.stats.rejected_from == {"p2": 1}
    assert node.stats.accepted_from == {"p1": 1, "p2": 1}
    assert torch.allclose(x_of(node), torch.full((2,), 3.0, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.asyncio
@pytest.mark.parametrize("secure", [True, False])
async def test_over_curvezmq_a_node_sends_large_tensors_in_chunks_and_reads_them(tmp_path, complete3, secure):
    size = wire.SECURE_CHUNK_BYTES // 8 * 2 + 3  # float64: two whole chunks and 24 bytes
    network = MemoryNetwork(secure=secure)
    node = make_node(tmp_path, complete3, network, size=size)
    for sender, value in (("p1", 3.0), ("p2", 6.0)):
        frames = wire.encode(kind="params", sender=sender, run_id=RUN, round=0, fingerprint=node.fingerprint,
                             tensors={"x": torch.full((size,), value, dtype=torch.float64)},
                             topology=node.topology_digest(0), chunk=wire.SECURE_CHUNK_BYTES)
        network.deliver("p0", frames, sender=sender)
    await node.exchange(0)
    assert node.stats.rejected == {} and torch.equal(x_of(node), torch.full((size,), 3.0, dtype=torch.float64))
    (sent,) = network.collect("p1")
    header = msgpack.unpackb(bytes(sent.frames[0]))
    if secure:
        assert header["chunk"] == wire.SECURE_CHUNK_BYTES
        assert [memoryview(f).nbytes for f in sent.frames[1:]] == [wire.SECURE_CHUNK_BYTES] * 2 + [24]
    else:
        assert "chunk" not in header and [memoryview(f).nbytes for f in sent.frames[1:]] == [size * 8]
    as_a_neighbour_reads_it = wire.Contract(RUN, node.fingerprint, frozenset({"p0"}), node.contract.specs)
    assert wire.decode(sent.frames, as_a_neighbour_reads_it).tensors["x"].equal(torch.zeros(size, dtype=torch.float64))


@pytest.mark.asyncio
async def test_without_security_the_header_names_the_sender_and_rejections_are_unauthenticated(
        tmp_path, network, complete3):
    node = make_node(tmp_path, complete3, network)
    network.deliver("p0", [b"not msgpack"], sender="p2")
    send(network, node, "p1", 0)
    send(network, node, "p2", 0)
    await node.exchange(0)
    assert node.stats.rejected == {"malformed_header": 1} and node.stats.rejected_from == {"unauthenticated": 1}


# ---- counters across a checkpoint --------------------------------------------------------------


async def faulty_round(node: Node, network: MemoryNetwork, round_: int) -> None:
    """Round ``round_`` with the same faults every time it runs: garbage, a duplicate, a stale message,
    one too far ahead, and (in odd rounds) a full queue towards p1."""
    network.full = {"p1"} if round_ % 2 else set()
    network.deliver("p0", [b"garbage"], sender="p1")
    send(network, node, "p1", round_, float(round_))
    send(network, node, "p1", round_, float(round_))
    if round_ > 0:
        send(network, node, "p1", round_ - 1, float(round_ - 1))  # the last round's again: stale
    send(network, node, "p1", round_ + 100)
    await node.exchange(round_)


COUNTERS = ("rejected", "rejected_from", "accepted_from", "send_dropped", "stale_dropped", "too_far_ahead",
            "duplicates", "older_dropped")


@pytest.mark.asyncio
async def test_a_resumed_peer_reports_the_counters_of_an_uninterrupted_one(tmp_path):
    pair = generate("complete", 2)
    options = {"rounds": 10, "checkpoint_every": 5}
    network = MemoryNetwork(secure=True)
    uninterrupted = make_node(tmp_path / "whole", pair, network, **options)
    for round_ in range(10):
        await faulty_round(uninterrupted, network, round_)
    uninterrupted.finish("completed")

    network = MemoryNetwork(secure=True)
    crashed = make_node(tmp_path / "resumed", pair, network, **options)
    for round_ in range(8):  # dies after round 7; its last checkpoint is round 5's
        await faulty_round(crashed, network, round_)
    network = MemoryNetwork(secure=True)  # a new process: nothing left in the old mailboxes
    resumed = make_node(tmp_path / "resumed", pair, network, resume=True, **options)
    assert resumed.start_round == 5
    for round_ in range(5, 10):
        await faulty_round(resumed, network, round_)
    resumed.finish("completed")

    whole = json.loads((tmp_path / "whole" / "p0" / "result.json").read_text())
    again = json.loads((tmp_path / "resumed" / "p0" / "result.json").read_text())
    assert {key: again[key] for key in COUNTERS} == {key: whole[key] for key in COUNTERS}
    assert whole["rejected_from"] == {"p1": 10} and whole["duplicates"] == 10 and whole["too_far_ahead"] == 10
    assert whole["stale_dropped"] == 9 and whole["send_dropped"] == 5
    assert torch.equal(x_of(uninterrupted), x_of(resumed))
    metrics = (tmp_path / "resumed" / "p0" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["duplicates"] == 10  # every counter in every metrics line too


@pytest.mark.asyncio
async def test_a_resumed_peer_does_not_wait_for_a_neighbour_named_absent(tmp_path, network, complete3):
    options = {"rounds": 10, "checkpoint_every": 2}
    node = make_node(tmp_path, complete3, network, **options)
    for round_ in range(4):
        send(network, node, "p1", round_)
        send(network, node, "p2", round_)
        await node.exchange(round_)
    network = MemoryNetwork()  # resumed by the launcher, p2 having finished: --resume --absent p2
    resumed = make_node(tmp_path, complete3, network, resume=True, absent="p2", **options)
    assert resumed.start_round == 4
    send(network, resumed, "p1", 4)
    await resumed.exchange(4)
    assert resumed.last["wait_seconds"] == 0 and resumed.last["heard"] == ["p1"]


@pytest.mark.asyncio
async def test_resume_without_a_checkpoint_will_not_run_over_a_finished_run(tmp_path, network):
    pair = generate("complete", 2)
    finished = make_node(tmp_path, pair, network, rounds=2)
    await run_rounds(finished, network, range(2), 1.0)
    finished.finish("completed")
    kept = {path.name: path.read_bytes() for path in (tmp_path / "p0").iterdir()}
    with pytest.raises(ConfigError, match=r"holds a finished run \(completed\), nothing to continue; pass "
                                          "another --out, or --overwrite to run it again from round 0"):
        make_node(tmp_path, pair, MemoryNetwork(), rounds=2, resume=True)
    assert {path.name: path.read_bytes() for path in (tmp_path / "p0").iterdir()} == kept
    with pytest.raises(ConfigError, match="pass another --out, or --overwrite to replace it"):  # no --resume offered
        make_node(tmp_path, pair, MemoryNetwork(), rounds=2)
    again = make_node(tmp_path, pair, MemoryNetwork(), rounds=2, resume=True, overwrite=True)  # a launcher's restart
    assert again.start_round == 0 and not (tmp_path / "p0" / "metrics.jsonl").read_text()


@pytest.mark.asyncio
async def test_resume_with_checkpoints_will_not_rerun_a_finished_run_unless_told_from_which_round(tmp_path, network):
    # Its last rounds run again alone would replace its model with another; the launcher's --resume reruns
    # them with the neighbours' from a shared round, which it names.
    pair = generate("complete", 2)
    finished = make_node(tmp_path, pair, network, rounds=4, checkpoint_every=1)
    await run_rounds(finished, network, range(4), 1.0)
    finished.finish("completed")
    kept = (tmp_path / "p0" / "model.pt").read_bytes()
    with pytest.raises(ConfigError, match="nothing to continue; pass another --out, --resume-round R to run its last "
                                          "rounds again from a kept checkpoint"):
        make_node(tmp_path, pair, MemoryNetwork(), rounds=4, resume=True)
    assert (tmp_path / "p0" / "model.pt").read_bytes() == kept
    again = make_node(tmp_path, pair, MemoryNetwork(), rounds=4, resume=True, resume_round=2)
    assert again.start_round == 2


@pytest.mark.asyncio
async def test_a_launchers_restart_resumes_only_the_outputs_of_its_own_launch(tmp_path, network, monkeypatch):
    # torchrun run again in a used directory: its first start is refused over the earlier launch's outputs;
    # its restart must not then continue (or overwrite) them with the options of the new launch.
    pair = generate("complete", 2)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "first")
    earlier = make_node(tmp_path, pair, network, rounds=4, checkpoint_every=1)
    await run_rounds(earlier, network, range(2), 1.0)  # then the first launch died
    kept = {path.name: path.read_bytes() for path in (tmp_path / "p0").iterdir()}
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "second")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(ConfigError, match=r"holds the outputs of another launch \(\$TORCHELASTIC_RUN_ID=first; "
                                          r"this one is \$TORCHELASTIC_RUN_ID=second\)"):
        make_node(tmp_path, pair, MemoryNetwork(), rounds=4, resume=True, overwrite=True)
    assert {path.name: path.read_bytes() for path in (tmp_path / "p0").iterdir()} == kept
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "first")  # a restart of the launch that wrote them resumes
    assert make_node(tmp_path, pair, MemoryNetwork(), rounds=4, resume=True, overwrite=True).start_round == 2
    # A requeued Slurm job keeps its id while a torchrun inside it gets a new one: Slurm's restart is compared.
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    make_node(tmp_path, pair, MemoryNetwork(), rounds=4, resume=True, overwrite=True)  # writes the launch anew
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "third")
    assert make_node(tmp_path, pair, MemoryNetwork(), rounds=4, resume=True, overwrite=True).start_round == 2


async def run_rounds(node: Node, network: MemoryNetwork, rounds: range, value: float) -> None:
    for round_ in rounds:
        send(network, node, "p1", round_, value)
        await node.exchange(round_)


def kept_checkpoint_rounds(node: Node) -> list[int]:
    paths = (node.files.previous_checkpoint, node.files.checkpoint)
    return [torch.load(path, weights_only=True)["round"] for path in paths if path.exists()]


@pytest.mark.asyncio
async def test_resuming_from_the_previous_checkpoint_leaves_none_of_the_rounds_run_again(tmp_path, network):
    pair, options = generate("complete", 2), {"rounds": 100, "checkpoint_every": 10}
    first = make_node(tmp_path, pair, network, **options)
    await run_rounds(first, network, range(65), 1.0)  # checkpoints of rounds 50 and 60; stopped in round 65
    assert kept_checkpoint_rounds(first) == [50, 60]
    network = MemoryNetwork()  # the launcher resumes the swarm from round 50, which every peer kept
    second = make_node(tmp_path, pair, network, resume=True, resume_round=50, **options)
    at_50 = x_of(second).clone()
    assert kept_checkpoint_rounds(second) == [50]  # round 60's is of the rounds now run again
    await run_rounds(second, network, range(50, 57), 2.0)  # stopped again, before its next checkpoint
    network = MemoryNetwork()
    third = make_node(tmp_path, pair, network, resume=True, **options)
    assert third.start_round == 50 and torch.equal(x_of(third), at_50)
    metrics = (tmp_path / "p0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in metrics] == list(range(50))
    await run_rounds(third, network, range(50, 61), 2.0)
    assert kept_checkpoint_rounds(third) == [50, 60]  # two rounds of this run to resume from


# ---- the end of a run --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("heard, status", [(False, "isolated"), (True, "completed")])
async def test_a_peer_that_heard_from_no_neighbour_says_so(tmp_path, network, heard, status, caplog):
    node = make_node(tmp_path, generate("complete", 2), network, rounds=3)
    if heard:
        send(network, node, "p1", 0)
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        for round_ in range(3):
            await node.exchange(round_)
        node.finish("completed")
    result = json.loads((tmp_path / "p0" / "result.json").read_text())
    assert result["status"] == status
    assert ("heard from no neighbour in the whole run" in caplog.text) == (not heard)


@pytest.mark.asyncio
async def test_a_peer_without_neighbours_is_not_isolated(tmp_path, network):
    solo = build_topology("solo", [PeerSpec("p0", "tcp://127.0.0.1:1", "tcp://127.0.0.1:1")], [])
    node = make_node(tmp_path, solo, network, rounds=1)
    await node.exchange(0)
    node.finish("completed")
    assert json.loads((tmp_path / "p0" / "result.json").read_text())["status"] == "completed"


class CountingTask:
    """A task whose every evaluation gives a new figure, so a figure shows which evaluation it came from."""

    def __init__(self):
        self.evaluations = 0

    def loss(self, model, batch) -> torch.Tensor:
        return (model.x - batch[0]).pow(2).sum()

    def evaluate(self, model) -> dict[str, float]:
        self.evaluations += 1
        return {"test_loss": float(self.evaluations)}


@pytest.mark.asyncio
@pytest.mark.parametrize("run_by", ["run", "exchange"])
async def test_a_run_to_its_end_reports_the_last_rounds_evaluation_and_any_other_end_evaluates_anew(
        tmp_path, network, run_by):
    solo = build_topology("solo", [PeerSpec("p0", "tcp://127.0.0.1:1", "tcp://127.0.0.1:1")], [])
    node = make_node(tmp_path, solo, network, rounds=4, eval_every=2)
    node.replica.task = task = CountingTask()
    if run_by == "run":
        batches = Batches(TensorDataset(torch.ones(4, 2, dtype=torch.float64)), batch_size=2, seed=0)
        node.replica.trainer = LocalTrainer(node.model, task, batches, torch.optim.SGD(node.model.parameters(), lr=0.1),
                                            torch.device("cpu"))
        await node.run()
    else:  # as an API Peer does: its script may step the optimizer after the last exchange
        for round_ in range(4):
            await node.exchange(round_)
    node.finish("completed")
    result = json.loads((tmp_path / "p0" / "result.json").read_text())
    metrics = [json.loads(line) for line in (tmp_path / "p0" / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("test_loss") for m in metrics] == [None, 1.0, None, 2.0]  # rounds 2 and 4 evaluate
    assert (task.evaluations, result["test_loss"]) == ((2, 2.0) if run_by == "run" else (3, 3.0))


def test_a_run_directory_that_cannot_be_written_is_a_configuration_error(tmp_path, network, complete3):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="--out .*file/p0: cannot write this peer's files there"):
        make_node(tmp_path / "file", complete3, network)


# ---- peers that disagree on the topology ---------------------------------------------------------


@pytest.mark.asyncio
async def test_parameters_sent_with_another_view_of_the_topology_are_rejected_naming_both_digests(
        tmp_path, network, caplog):
    metropolis, lazy = generate("ring", 4), generate("ring", 4, mixing="lazy")
    node = make_node(tmp_path, metropolis, network)
    theirs = make_node(tmp_path, lazy, MemoryNetwork(), "p1")  # p1 as the lazy file makes it
    ours_digest, their_digest = node.topology_digest(0), theirs.topology_digest(0)
    assert ours_digest != their_digest
    network.deliver("p0", params(theirs, "p1", 0, 1000.0), sender="p1")
    send(network, node, "p3", 0, 3.0)
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        await node.exchange(0)
    assert node.stats.rejected == {"topology": 1} and node.last["missing"] == ["p1"]
    # p1's weight (1/3) went to p0 itself: x = 1/3 * 0 + 1/3 * 0 + 1/3 * 3
    assert torch.allclose(x_of(node), torch.full((2,), 1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    assert (f"topology digest {their_digest} from 'p1' for round 0, this peer's is {ours_digest}: 'p1' was likely "
            "started with a different topology file") in caplog.text
    assert "this peer uses ring4: start every peer with the same topology file" in caplog.text


# ---- two processes with one peer id ------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("secure", [False, True])
async def test_two_different_messages_for_one_round_from_one_id_are_logged_once_then_counted(
        tmp_path, complete3, caplog, secure):
    network = MemoryNetwork(secure=secure)  # with keys: both processes hold p2's key, so both get in
    node = make_node(tmp_path, complete3, network, rounds=5)
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        for round_ in range(3):
            send(network, node, "p1", round_, 1.0)
            send(network, node, "p2", round_, 2.0)  # the real p2
            send(network, node, "p2", round_, 2.0 + round_)  # the impostor, equal in round 0 only
            await node.exchange(round_)
        node.finish("completed")
    assert node.stats.identity_conflicts == {"p2": 2} and node.stats.duplicates == 1
    assert caplog.text.count("identity conflict") == 1
    assert ("identity conflict: two different messages from p2 for round 1, so two processes are sending as p2"
            in caplog.text)
    result = json.loads((tmp_path / "p0" / "result.json").read_text())
    assert result["identity_conflicts"] == {"p2": 2} and result["status"] == "completed"
    # The first message of each round was mixed: x = (x + 1 + 2) / 3 every round, from x = 0.
    expected = 0.0
    for _ in range(3):
        expected = (expected + 1.0 + 2.0) / 3
    assert torch.allclose(x_of(node), torch.full((2,), expected, dtype=torch.float64), rtol=1e-12, atol=0)


# ---- a neighbour behind, a peer behind ------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_suspected_neighbour_far_behind_is_not_waited_for_and_one_close_behind_is(tmp_path, network,
                                                                                            complete3):
    node = make_node(tmp_path, complete3, network, catch_up=2)
    send(network, node, "p1", 0)
    send(network, node, "p2", 0)
    await node.exchange(0)
    send(network, node, "p1", 1)
    await node.exchange(1)  # p2 paused: one deadline, then suspected
    assert node.last["wait_seconds"] == RECV_TIMEOUT and node.membership.suspected == {"p2"}
    for round_ in (4, 5):
        send(network, node, "p1", round_)
        send(network, node, "p2", round_ - 3)  # back, replaying the rounds it missed, 3 rounds behind
        await node.exchange(round_)
        # More than --catch-up rounds behind: it will take a state; waiting would cost a deadline a round.
        assert node.last["wait_seconds"] == 0 and node.last["missing"] == ["p2"] and node.last["timed_out"] == []
    assert network.clock() == RECV_TIMEOUT and node.membership.suspected == {"p2"}
    send(network, node, "p1", 6)
    send(network, node, "p2", 4)  # 2 rounds behind: close enough to reach the round soon
    await node.exchange(6)
    send(network, node, "p1", 7)
    send(network, node, "p2", 7, at=network.clock() + 0.25)
    await node.exchange(7)  # waited for again
    assert node.last["heard"] == ["p1", "p2"] and node.last["wait_seconds"] == 0.25
    assert node.membership.suspected == set()


def state_answer(node: Node, sender: str, round_: int, value: float) -> list:
    return wire.encode(kind="state", sender=sender, run_id=RUN, round=round_, fingerprint=node.fingerprint,
                       tensors={"x": torch.full((2,), value, dtype=torch.float64)}, topology=node.topology_digest(round_))


@pytest.mark.asyncio
async def test_a_peer_far_behind_its_neighbours_takes_a_neighbours_state_instead_of_replaying(
        tmp_path, network, complete3, caplog):
    node = make_node(tmp_path, complete3, network, rounds=100, catch_up=10)
    for neighbour in ("p1", "p2"):
        send(network, node, neighbour, 0)
    await node.exchange(0)
    assert await node.catch_up(1) == 1  # nobody ahead
    for neighbour in ("p1", "p2"):
        send(network, node, neighbour, 1)
    send(network, node, "p1", 12)  # 10 rounds ahead of round 2: not more than --catch-up
    await node.exchange(1)  # reads everything that has arrived
    network.collect("p1"), network.collect("p2")  # what p0 sent, not looked at here
    assert await node.catch_up(2) == 2 and network.collect("p1") == []
    for neighbour in ("p1", "p2"):
        send(network, node, neighbour, 2)
    send(network, node, "p2", 40)  # back from a pause: its neighbours are at round 40
    await node.exchange(2)
    network.collect("p1"), network.collect("p2")
    network.deliver("p0", state_answer(node, "p2", 41, 7.0), sender="p2", at=network.clock() + 0.25)
    with caplog.at_level(logging.INFO, logger="p2ptrain.peer"):
        assert await node.catch_up(3) == 41
    assert network.clock() == 0.25 and node.stats.caught_up == 1
    assert torch.equal(x_of(node), torch.full((2,), 7.0, dtype=torch.float64))
    asked = network.collect("p1") + network.collect("p2")
    assert {wire.decode_header(a.frames[0])["kind"] for a in asked} == {"state_request"}
    assert "round 3 is 37 rounds behind the newest round heard (40); asking p1,p2 for their state" in caplog.text
    assert "caught up: took the state of p2, continuing from round 41 instead of 3 (38 rounds not run)" in caplog.text
    send(network, node, "p1", 41)
    send(network, node, "p2", 41)
    await node.exchange(41)  # the ordinary deadline, the neighbours' round-41 parameters mixed
    assert node.last["heard"] == ["p1", "p2"] and node.rounds_completed == 41


@pytest.mark.asyncio
async def test_a_state_request_nobody_answers_ahead_is_not_repeated_for_catch_up_rounds(tmp_path, network, complete3,
                                                                                         caplog):
    node = make_node(tmp_path, complete3, network, rounds=100, catch_up=10)
    send(network, node, "p1", 0)
    send(network, node, "p2", 40)  # an impostor's round, or a neighbour that exited: nobody answers
    await node.exchange(0)
    start, before = network.clock(), x_of(node).clone()
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        assert await node.catch_up(1) == 1
    assert network.clock() == start + RECV_TIMEOUT and node.stats.caught_up == 0
    assert "round 1: no neighbour ahead answered the state request within 1.5s" in caplog.text
    assert await node.catch_up(10) == 10 and network.clock() == start + RECV_TIMEOUT  # not asked again yet
    network.deliver("p0", state_answer(node, "p1", 11, 7.0), sender="p1")  # not ahead of round 11: ignored
    assert await node.catch_up(11) == 11 and network.clock() == start + 2 * RECV_TIMEOUT
    assert node.stats.caught_up == 0 and torch.equal(x_of(node), before)  # its own parameters, still


@pytest.mark.asyncio
@pytest.mark.parametrize("options", [{"catch_up": 0}, {"mode": "async"}])
async def test_a_peer_behind_does_not_take_a_state_when_catch_up_is_off_or_in_async_mode(
        tmp_path, network, complete3, options):
    node = make_node(tmp_path, complete3, network, rounds=100, **options)
    send(network, node, "p2", 40)
    send(network, node, "p1", 40)
    await node.exchange(1)
    network.collect("p1"), network.collect("p2")  # p0's round-1 parameters
    assert await node.catch_up(2) == 2 and network.collect("p1") == network.collect("p2") == []


@pytest.mark.asyncio
async def test_metrics_a_full_disk_will_not_take_at_the_end_are_a_write_error_not_a_crash(tmp_path, network):
    import errno

    class FullDiskLines:  # the metrics file, its last buffered lines refused when it is closed
        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "p0" / "metrics.jsonl"))

    node = make_node(tmp_path, generate("complete", 2), network, rounds=1)
    node.metrics.close()
    node.metrics = FullDiskLines()
    node.finish("completed")  # the model and result were written; the exit code is then 4
    assert node.write_error.errno == errno.ENOSPC and node.transport.closed
    assert (tmp_path / "p0" / "model.pt").exists()  # written before the metrics were closed
    assert json.loads((tmp_path / "p0" / "result.json").read_text())["status"] == "isolated"  # no round heard p1
