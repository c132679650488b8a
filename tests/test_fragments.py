"""Model-fragment gossip and half-precision messages: the cut, the schedule, the mixing, the wire."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptrain import wire
from p2ptrain.algorithms import Gossip, mix
from p2ptrain.algorithms.base import Diverged
from p2ptrain.averaging import initial_parameters
from p2ptrain.config import ConfigError, PeerConfig
from p2ptrain.fragments import cut, fragment_at, paste, plan
from p2ptrain.results import flat_parameters
from p2ptrain.simulate import simulate
from p2ptrain.topology import generate


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8), count=st.integers(1, 12))
def test_every_value_is_in_exactly_one_fragment_and_fragments_differ_by_at_most_one_value(sizes, count):
    named = {f"t{i}": size for i, size in enumerate(sizes)}
    if count > sum(sizes):
        with pytest.raises(ValueError, match="leave some empty"):
            plan(named, count)
        return
    fragments = plan(named, count)
    covered = {name: [0] * size for name, size in named.items()}
    for pieces in fragments:
        for piece in pieces:
            for i in range(piece.start, piece.stop):
                covered[piece.name][i] += 1
    assert all(c == 1 for counts in covered.values() for c in counts)
    lengths = [sum(piece.size for piece in pieces) for pieces in fragments]
    assert max(lengths) - min(lengths) <= 1
    # Pieces keep the message order of the tensors.
    order = list(named)
    for pieces in fragments:
        assert [order.index(p.name) for p in pieces] == sorted(order.index(p.name) for p in pieces)


def test_the_protocols_worked_example_of_a_cut():
    fragments = plan({"weight": 2, "bias": 1}, 2)
    assert [[p.key for p in pieces] for pieces in fragments] == [["weight[0:1]"], ["weight[1:2]", "bias[0:1]"]]


@pytest.mark.parametrize("count, period", [(4, 1), (3, 3), (2, 4)])
def test_the_schedule_visits_every_fragment_once_per_cycle_holding_each_for_a_period(count, period):
    rounds = [fragment_at(r, count, period) for r in range(3 * count * period)]
    cycle = rounds[:count * period]
    assert sorted(set(cycle)) == list(range(count))
    assert all(cycle.count(k) == period for k in range(count))
    assert rounds == cycle * 3
    assert all(rounds[r] == rounds[r - r % period] for r in range(len(rounds)))  # held for a whole period


def test_float16_messages_refuse_values_beyond_its_range_instead_of_sending_inf():
    gossip, params, _ = gossip_pair(wire_dtype=torch.float16)
    params["b"].data[1] = 1e6  # a raw feature's variance, say: float16 ends at 65504
    with pytest.raises(Diverged, match="'b' holds values beyond float16's range .* use --wire-dtype bfloat16"):
        gossip.outgoing(0)
    assert torch.isfinite(gossip_pair(wire_dtype=torch.bfloat16)[0].outgoing(0)["w"]).all()


def test_cut_shares_memory_and_paste_copies():
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.arange(4.0)}
    pieces = plan({"a": 6, "b": 4}, 2)[1]  # values 5..9 of 10: a[5:6], b[0:4]
    parts = cut(tensors, pieces)
    assert list(parts) == ["a[5:6]", "b[0:4]"]
    assert parts["a[5:6]"].data_ptr() == tensors["a"].reshape(-1)[5:].data_ptr()
    new = paste(tensors, pieces, {key: -t for key, t in parts.items()})
    assert new["a"].tolist() == [[0, 1, 2], [3, 4, -5]] and new["b"].tolist() == [-0.0, -1, -2, -3]
    assert tensors["a"][1, 2] == 5  # the input is unchanged: the sent storage must not move under ZeroMQ


def gossip_pair(**options):
    torch.manual_seed(0)
    params = {"w": torch.nn.Parameter(torch.randn(5, 3)), "b": torch.nn.Parameter(torch.randn(3))}
    row = {"a": 0.6, "b": 0.4}
    return Gossip("a", row, params, **options), params, row


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_messages_are_mixed_in_full_precision_and_the_local_copy_is_never_rounded(dtype):
    gossip, params, row = gossip_pair(wire_dtype=dtype)
    own = {name: p.detach().clone() for name, p in params.items()}
    sent = gossip.outgoing(0)
    assert all(t.dtype == dtype for t in sent.values())
    assert all(torch.equal(sent[n], own[n].to(dtype)) for n in own)
    neighbour = {name: (t * 1.001 + 0.37).to(dtype) for name, t in own.items()}
    gossip.update(0, {"b": neighbour})
    expected = mix("a", own, {"b": {n: t.float() for n, t in neighbour.items()}}, row)
    for name, p in params.items():
        assert p.dtype == torch.float32
        assert torch.equal(p.detach(), expected[name])  # the float32 mix of own (unrounded) and theirs (rounded)
    # Without neighbours nothing is rounded at all: the own weight is then 1.
    gossip.update(1, {})
    assert all(torch.equal(p.detach(), expected[n]) for n, p in params.items())


def test_a_fragment_round_mixes_only_its_fragment():
    gossip, params, row = gossip_pair(fragments=3)
    before = {n: p.detach().clone() for n, p in params.items()}
    message = gossip.outgoing(1)  # fragment 1 of 3 on a static graph
    assert set(message) == {p.key for p in gossip.plan[1]}
    theirs = {key: torch.zeros_like(t) for key, t in message.items()}
    gossip.update(1, {"b": theirs})
    flat_before = torch.cat([before["w"].reshape(-1), before["b"]])
    flat_after = torch.cat([params["w"].detach().reshape(-1), params["b"].detach()])
    changed = (flat_after != flat_before).nonzero().reshape(-1).tolist()
    assert changed == list(range(6, 12))  # 15 + 3 = 18 values in 3 fragments: fragment 1 is values 6..11
    assert torch.allclose(flat_after[6:12], 0.6 * flat_before[6:12])


def test_pure_averaging_in_fragments_on_the_one_peer_exponential_graph_is_exact_after_k_times_k_rounds():
    # n = 2^k: whole-model gossip on the one-peer exponential graph reaches the exact average in k
    # rounds; each fragment held for a period of k rounds reaches it in its turn, so K fragments take k K.
    topology = generate("one-peer-exponential", 8)
    k, fragments = 3, 4
    config = PeerConfig(topology="-", rounds=k * fragments, local_steps=0, init="per-peer", model="logreg",
                        fragments=fragments).validate()
    start = initial_parameters(topology, config)
    final = np.stack([flat_parameters(state).numpy() for state in simulate(config, topology).values()])
    np.testing.assert_allclose(final, np.broadcast_to(start.mean(axis=0), final.shape), rtol=0, atol=1e-6)
    short = np.stack([flat_parameters(s).numpy() for s in simulate(config.replace(rounds=k * fragments - 1),
                                                                       topology).values()])
    assert np.abs(short - start.mean(axis=0)).max() > 1e-3  # one round less leaves a fragment unmixed


def test_fragments_and_half_precision_cut_the_bytes_per_round_by_their_factors():
    topology = generate("ring", 8)
    sizes = {}
    for fragments, dtype in [(1, ""), (4, ""), (1, "bfloat16"), (4, "bfloat16")]:
        config = PeerConfig(topology="-", fragments=fragments, wire_dtype=dtype).validate()
        from p2ptrain.replica import build_replica

        replica = build_replica(config, topology, "p0")
        frames = [wire.encode(kind="params", sender="p0", run_id="r", round=r, fingerprint="f" * 16,
                              tensors=replica.sent(r), fragment=replica.algorithm.fragment_at(r)) for r in range(4)]
        sizes[fragments, dtype] = np.mean([wire.frame_bytes(f) for f in frames])
    full = sizes[1, ""]
    assert sizes[4, ""] / full <= 0.27
    assert sizes[1, "bfloat16"] / full <= 0.52
    assert sizes[4, "bfloat16"] / full <= 0.14


def test_fragments_and_wire_dtypes_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match="work with --algo gossip"):
        PeerConfig(topology="-", algo="admm", fragments=2).validate()
    with pytest.raises(ConfigError, match="work with --algo gossip"):
        PeerConfig(topology="-", algo="admm", wire_dtype="bfloat16").validate()
    with pytest.raises(ConfigError, match="--mode sync"):
        PeerConfig(topology="-", mode="async", fragments=2).validate()
    with pytest.raises(ConfigError, match="choose from bfloat16, float16"):
        PeerConfig(topology="-", wire_dtype="int8").validate()


def fragment_contract() -> tuple[wire.Contract, list]:
    layouts = [(wire.TensorSpec("weight[0:1]", "float32", (1,)),),
               (wire.TensorSpec("weight[1:2]", "float32", (1,)), wire.TensorSpec("bias[0:1]", "float32", (1,)))]
    whole = (wire.TensorSpec("weight", "float32", (1, 2)), wire.TensorSpec("bias", "float32", (1,)))
    contract = wire.Contract("r", "f" * 16, frozenset({"p1"}), whole, fragments=tuple(layouts), period=1,
                             state_specs=whole)
    return contract, layouts


def encode(round_, tensors, fragment, kind="params"):
    return wire.encode(kind=kind, sender="p1", run_id="r", round=round_, fingerprint="f" * 16, tensors=tensors,
                       fragment=fragment)


def test_the_decoder_takes_the_fragment_its_round_carries_and_refuses_any_other():
    contract, _ = fragment_contract()
    second = {"weight[1:2]": torch.tensor([2.0]), "bias[0:1]": torch.tensor([0.5])}
    message = wire.decode(encode(3, second, 1), contract)  # round 3 carries fragment 3 mod 2 = 1
    assert set(message.tensors) == {"weight[1:2]", "bias[0:1]"}
    for round_, fragment, reason in [(2, 1, "fragment 1 in round 2, whose fragment is 0"),
                                     (3, None, "no fragment index")]:
        with pytest.raises(wire.FragmentMismatch, match=reason):
            wire.decode(encode(round_, second, fragment), contract)
    whole = {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([0.5])}
    assert set(wire.decode(encode(9, whole, None, kind="state"), contract).tensors) == {"weight", "bias"}
    with pytest.raises(wire.FragmentMismatch, match="names fragment 1"):
        wire.decode(encode(9, whole, 1, kind="state"), contract)
    assert wire.FragmentMismatch.reason == "fragment"


def test_a_fragment_field_holding_nil_is_named_all_the_same():
    # PROTOCOL.md section 3, step 9: absent from every other message; nil is not absent.
    whole = (wire.TensorSpec("w", "float32", (1,)),)
    frames = wire.encode(kind="params", sender="p1", run_id="r", round=0, fingerprint="f" * 16,
                         tensors={"w": torch.tensor([1.0])})
    header = msgpack.unpackb(frames[0])
    contract = wire.Contract("r", "f" * 16, frozenset({"p1"}), whole)
    assert wire.decode(frames, contract).tensors["w"].item() == 1.0
    with pytest.raises(wire.FragmentMismatch, match="names fragment None"):
        wire.decode([msgpack.packb(header | {"fragment": None}), *frames[1:]], contract)


def test_a_whole_model_peer_refuses_a_fragment_and_says_so():
    whole = (wire.TensorSpec("weight", "float32", (1, 2)), wire.TensorSpec("bias", "float32", (1,)))
    contract = wire.Contract("r", "e" * 16, frozenset({"p1"}), whole)
    with pytest.raises(wire.FingerprintMismatch, match="sends its model in fragments and this peer whole"):
        wire.decode(encode(1, {"weight[1:2]": torch.tensor([2.0])}, 1), contract)


@pytest.mark.swarm
def test_a_swarm_of_processes_exchanging_half_precision_fragments_equals_the_simulation(topology_file, tmp_path):
    import json

    from p2ptrain.storage import read_json_lines
    from p2ptrain.topology import load_topology

    from .processes import run_launcher

    out = tmp_path / "run"
    result = run_launcher([str(topology_file("ring", 4)), "--fragments", "3", "--wire-dtype", "bfloat16",
                           "--rounds", "30", "--eval-every", "10", "--out", str(out), "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    config = PeerConfig.from_file(out / "peer-config.json")
    for peer_id, state in simulate(config, load_topology(out / "topology.toml")).items():
        got = torch.load(out / "peers" / peer_id / "model.pt", weights_only=True)
        for name, tensor in state.items():
            assert torch.equal(got[name], tensor), f"{peer_id} {name}"
    records = read_json_lines(out / "peers" / "p1" / "metrics.jsonl")
    assert all(r["heard"] == ["p0", "p2"] and not r["rejected"] for r in records)
    assert json.loads((out / "peers" / "p1" / "config.json").read_text())["agreement"] == \
        {"algorithm": "gossip", "fragments": 3, "wire_dtype": "bfloat16"}
