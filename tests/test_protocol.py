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

PROTOCOL = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text(encoding="utf-8")
VECTOR_BLOCK = re.compile(r"^```fingerprint-vector\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def vectors() -> list[dict[str, str]]:
    """Each ```fingerprint-vector block as {field: text}, one "field: text" line per field."""
    found = []
    for block in VECTOR_BLOCK.findall(PROTOCOL):
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
