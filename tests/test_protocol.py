"""PROTOCOL.md against the code: the fingerprint test vectors and the worked example of section 2
are read from the document and recomputed, so the document cannot drift from what peers do."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import msgpack
import pytest

from p2ptrain import wire
from p2ptrain.topology import canonical_graph, generate, load_topology, topology_digest

PROTOCOL = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text(encoding="utf-8")


def vectors(kind: str = "fingerprint") -> list[dict[str, str]]:
    """Each ```KIND-vector block as {field: text}, one "field: text" line per field."""
    found = []
    for block in re.findall(rf"^```{kind}-vector\n(.*?)^```$", PROTOCOL, re.MULTILINE | re.DOTALL):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line.strip())
        found.append(fields)
    return found


def specs_from(text: str) -> tuple[wire.TensorSpec, ...]:
    """'weight float32 [1, 2]; bias float32 [1]' -> the TensorSpecs it describes."""
    specs = []
    for item in text.split(";"):
        name, dtype, shape = item.strip().split(" ", 2)
        specs.append(wire.TensorSpec(name, dtype, tuple(json.loads(shape))))
    return tuple(specs)


VECTORS = vectors()


def test_the_document_has_the_gossip_the_admm_and_the_fragment_vectors():
    assert [json.loads(v["agreement"]) for v in VECTORS] == [
        {"algorithm": "gossip"}, {"algorithm": "admm", "admm_penalty": 0.1},
        {"algorithm": "gossip", "fragments": 4, "wire_dtype": "bfloat16"}]
    for vector in VECTORS:
        assert set(vector) == {"tensors", "agreement", "canonical", "fingerprint"}
        assert specs_from(vector["tensors"]) == (wire.TensorSpec("weight", "float32", (1, 2)),
                                                 wire.TensorSpec("bias", "float32", (1,)))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["agreement"])
def test_each_vector_is_what_the_code_computes(vector):
    specs, agreement = specs_from(vector["tensors"]), json.loads(vector["agreement"])
    assert wire.canonical_text(specs, agreement) == vector["canonical"]
    assert wire.fingerprint(specs, agreement) == vector["fingerprint"]
    # The hash is of the printed text itself, so another implementation can check its hashing alone.
    digest = hashlib.blake2b(vector["canonical"].encode("utf-8"), digest_size=8).hexdigest()
    assert digest == vector["fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{16}", vector["fingerprint"])


def test_the_worked_example_carries_the_fingerprint_of_its_tensors():
    section = PROTOCOL[PROTOCOL.index("### 2.4 Example"):PROTOCOL.index("## 3. Validation")]
    dump = re.search(r"^```\n([0-9a-f \n]+)^```$", section, re.MULTILINE).group(1)
    frame = bytes.fromhex(dump.replace("\n", " "))
    assert int(re.search(r"Frame 0\s+\((\d+) bytes\)", section).group(1)) == len(frame)
    header = msgpack.unpackb(frame)
    specs = tuple(wire.TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in header["tensors"])
    assert header["fingerprint"] == wire.fingerprint(specs, {"algorithm": "gossip"}) == VECTORS[0]["fingerprint"]
    assert f'"fingerprint": "{header["fingerprint"]}"' in section
    ring8 = load_topology(Path(__file__).resolve().parent.parent / "topologies" / "ring8.toml")
    assert header["topology"] == topology_digest(ring8, header["round"])
    assert f'"topology": "{header["topology"]}"' in section and f"topology digest `{header['topology']}`" in section


TOPOLOGY_VECTORS = vectors("topology")


def test_the_document_has_metropolis_lazy_and_schedule_topology_vectors():
    assert [v["topology"] for v in TOPOLOGY_VECTORS] == [
        "ring 4, metropolis", "ring 4, lazy", "one-peer-exponential 4, uniform"]
    assert len({v["digest"] for v in TOPOLOGY_VECTORS}) == 3


@pytest.mark.parametrize("vector", TOPOLOGY_VECTORS, ids=lambda v: v["topology"])
def test_each_topology_vector_is_what_the_code_computes(vector):
    """'ring 4, lazy' is the generator's topology of that kind and size with that mixing."""
    kind_and_size, mixing = vector["topology"].split(", ")
    kind, size = kind_and_size.split(" ")
    topology, round_ = generate(kind, int(size), mixing=mixing), int(vector["round"])
    assert canonical_graph(topology, round_) == vector["canonical"]
    assert topology_digest(topology, round_) == vector["digest"]
    digest = hashlib.blake2b(vector["canonical"].encode("utf-8"), digest_size=8).hexdigest()
    assert digest == vector["digest"]
    # The text lists exactly the round's edges, each with its receiver's weight for its sender.
    listed = json.loads(vector["canonical"])
    assert listed["peers"] == list(topology.ids)
    assert {(j, i): w for j, i, w in listed["edges"]} == {
        (j, i): w for i in topology.ids for j, w in topology.mixing_row(i, round_).items() if j != i}
