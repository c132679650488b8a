"""CurveZMQ keys: the keys directory and its file modes, public keys pinned in a topology, the command line.

Secrets never appear in output, and key files others could read are refused.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from p2ptrain import keys
from p2ptrain.ports import free_port_block
from p2ptrain.topology import TopologyError, dump_topology, generate, parse_topology
from p2ptrain.transport import ZmqTransport

from .test_curve_transport import receive_one


# ---- keys directory ------------------------------------------------------------------------


@pytest.fixture
def ring4():
    return generate("ring", 4, base_port=free_port_block(4))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_a_pair_per_peer_with_private_secret_files(ring4, tmp_path, monkeypatch):
    directory = tmp_path / "keys"

    def no_chmod(*args, **kwargs):
        raise AssertionError("key files must be created with their mode, not chmod-ed afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    permissive = os.umask(0)  # with no umask to help, only the mode given at creation protects the file
    try:
        public_keys = keys.generate(ring4, directory)
    finally:
        os.umask(permissive)
    assert mode_of(directory) == 0o700
    assert sorted(public_keys) == sorted(ring4.ids)
    for peer_id in ring4.ids:
        assert mode_of(keys.secret_key_path(directory, peer_id)) == 0o600
        assert mode_of(keys.public_key_path(directory, peer_id)) == 0o644
        secret = keys.load_secret_key(directory, peer_id)
        assert zmq.curve_public(secret.encode()).decode() == public_keys[peer_id]
    assert keys.load_public_keys(directory, ring4.ids) == public_keys
    assert not list(directory.glob(".*"))  # no temporary files left


def test_generate_refuses_to_replace_keys_unless_forced(ring4, tmp_path):
    directory = tmp_path / "keys"
    first = keys.generate(ring4, directory)
    with pytest.raises(keys.KeyFileError, match="--force"):
        keys.generate(ring4, directory)
    assert keys.load_public_keys(directory, ring4.ids) == first
    keys.secret_key_path(directory, "p0").chmod(0o644)  # a loosened old file must not pass its mode on
    second = keys.generate(ring4, directory, force=True)
    assert all(second[p] != first[p] for p in ring4.ids)
    assert mode_of(keys.secret_key_path(directory, "p0")) == 0o600


def test_generate_refuses_a_directory_open_to_others(ring4, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(keys.KeyFileError, match=f"chmod 700 {shared}"):
        keys.generate(ring4, shared)
    assert list(shared.iterdir()) == []


def test_a_secret_file_others_can_read_is_refused_with_the_fix(ring4, tmp_path):
    directory = tmp_path / "keys"
    keys.generate(ring4, directory)
    path = keys.secret_key_path(directory, "p1")
    secret = path.read_text().strip()
    path.chmod(0o644)
    with pytest.raises(keys.KeyFileError, match=f"chmod 600 {path}") as error:
        keys.load_secret_key(directory, "p1")
    assert secret not in str(error.value)


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_public_file_others_can_change_is_refused_with_the_fix(ring4, tmp_path, mode):
    directory = tmp_path / "keys"
    keys.generate(ring4, directory)
    path = keys.public_key_path(directory, "p2")
    path.chmod(mode)
    with pytest.raises(keys.KeyFileError, match=f"chmod 644 {path}"):
        keys.load_public_keys(directory, ["p2"])
    path.chmod(0o444)  # read-only for everyone is as safe as 0644
    assert keys.load_public_keys(directory, ["p2"])["p2"] == path.read_text().strip()


@pytest.mark.parametrize("content, problem", [
    (b"", "0 characters"),
    (b"abc\n", "3 characters"),
    (b"~" * 40 + b"\n", "outside the Z85 alphabet"),
    (b"#" * 40 + b"\n", "not valid Z85"),
    (bytes(range(128, 168)), "not ASCII"),
])
@pytest.mark.parametrize("kind", ["public", "secret"])
def test_malformed_key_files_are_named_with_what_is_wrong(tmp_path, content, problem, kind):
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    path = keys.public_key_path(directory, "p0") if kind == "public" else keys.secret_key_path(directory, "p0")
    path.write_bytes(content)
    path.chmod(0o600)
    load = (lambda: keys.load_public_keys(directory, ["p0"])) if kind == "public" else \
        (lambda: keys.load_secret_key(directory, "p0"))
    with pytest.raises(keys.KeyFileError, match=problem) as error:
        load()
    assert str(path) in str(error.value)


def test_missing_key_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(keys.KeyFileError, match=r"p3\.public does not exist"):
        keys.load_public_keys(tmp_path, ["p3"])
    with pytest.raises(keys.KeyFileError, match=r"p3\.secret does not exist"):
        keys.load_secret_key(tmp_path, "p3")
    (tmp_path / "p4.secret").mkdir()
    os.mkfifo(tmp_path / "p5.secret", 0o600)
    for peer_id in ("p4", "p5"):
        with pytest.raises(keys.KeyFileError, match="not a regular file"):
            keys.load_secret_key(tmp_path, peer_id)


def test_load_security_refuses_a_secret_that_does_not_match_its_public_key(ring4, tmp_path):
    directory = tmp_path / "keys"
    keys.generate(ring4, directory)
    os.replace(keys.secret_key_path(directory, "p1"), keys.secret_key_path(directory, "p0"))
    with pytest.raises(keys.KeyFileError, match="does not belong"):
        keys.load_security(ring4, "p0", directory)


@pytest.mark.asyncio
async def test_generated_keys_secure_a_pair_of_peers_end_to_end(context, tmp_path):
    topology = generate("ring", 3, base_port=free_port_block(3))
    directory = tmp_path / "keys"
    keys.generate(topology, directory)
    # Each host holds its own secret only; public keys come pinned in the topology.
    pinned = parse_topology(dump_topology(keys.pin(topology, keys.load_public_keys(directory, topology.ids))))
    hosts = {}
    for peer_id in ("p0", "p1"):
        hosts[peer_id] = tmp_path / f"host-{peer_id}"
        hosts[peer_id].mkdir(mode=0o700)
        os.replace(keys.secret_key_path(directory, peer_id), keys.secret_key_path(hosts[peer_id], peer_id))
    p0 = ZmqTransport(context, pinned.peer("p0").bind, {"p1": pinned.peer("p1").endpoint},
                   security=keys.load_security(pinned, "p0", hosts["p0"]))
    p1 = ZmqTransport(context, pinned.peer("p1").bind, {}, security=keys.load_security(pinned, "p1", hosts["p1"]))
    try:
        assert p0.send("p1", [b"hello"])
        assert (await receive_one(p1)).sender == "p0"
    finally:
        p0.close()
        p1.close()


# ---- public keys pinned in a topology ------------------------------------------------------


def test_a_topology_may_pin_public_keys_and_keeps_them_through_a_round_trip(ring4, tmp_path):
    public_keys = keys.generate(ring4, tmp_path / "keys")
    pinned = parse_topology(dump_topology(keys.pin(ring4, public_keys)))
    assert {spec.id: spec.public_key for spec in pinned.peers} == public_keys
    assert keys.public_keys_of(pinned, None) == public_keys
    assert all(spec.public_key is None for spec in parse_topology(dump_topology(ring4)).peers)


def test_a_pinned_public_key_is_checked_when_the_topology_loads(ring4, tmp_path):
    public_keys = keys.generate(ring4, tmp_path / "keys")
    text = dump_topology(keys.pin(ring4, public_keys))
    with pytest.raises(TopologyError, match="not a CurveZMQ public key"):
        parse_topology(text.replace(public_keys["p2"], "short"))
    with pytest.raises(TopologyError, match="same public_key"):
        parse_topology(text.replace(public_keys["p2"], public_keys["p1"]))
    with pytest.raises(TopologyError, match="public_key must be a string"):
        parse_topology(text.replace(f'"{public_keys["p2"]}"', "42"))


def test_generate_refuses_a_topology_that_pins_other_keys(ring4, tmp_path):
    pinned = keys.pin(ring4, keys.generate(ring4, tmp_path / "old"))
    with pytest.raises(keys.KeyFileError, match="pins public keys"):
        keys.generate(pinned, tmp_path / "new")


# ---- command line --------------------------------------------------------------------------


def secrets_in(directory: Path) -> list[str]:
    return [path.read_text().strip() for path in directory.glob(f"*{keys.SECRET_SUFFIX}")]


def test_the_command_line_generates_shows_and_pins_without_printing_a_secret(ring4, tmp_path, capsys):
    topology_file = tmp_path / "ring4.toml"
    topology_file.write_text(dump_topology(ring4))
    directory = tmp_path / "keys"
    assert keys.main(["generate", "--topology", str(topology_file), "--dir", str(directory)]) == 0
    assert keys.main(["generate", "--topology", str(topology_file), "--dir", str(directory)]) == 2
    assert keys.main(["show", "--dir", str(directory)]) == 0
    pinned_file = tmp_path / "pinned.toml"
    assert keys.main(["pin", "--topology", str(topology_file), "--dir", str(directory), "-o", str(pinned_file)]) == 0
    assert keys.main(["show", "--topology", str(pinned_file)]) == 0
    output = capsys.readouterr()
    public_keys = keys.load_public_keys(directory, ring4.ids)
    assert all(key in output.out for key in public_keys.values())
    assert "--force" in output.err
    for secret in secrets_in(directory):
        assert secret not in output.out + output.err
        assert secret not in pinned_file.read_text()
    unwritable = tmp_path / "no" / "pinned.toml"
    assert keys.main(["pin", "--topology", str(topology_file), "--dir", str(directory), "-o", str(unwritable)]) == 2
    assert f"cannot write {unwritable} (No such file or directory)" in capsys.readouterr().err


def test_python_dash_m_keys_runs_and_prints_no_secret(ring4, tmp_path):
    topology_file = tmp_path / "ring4.toml"
    topology_file.write_text(dump_topology(ring4))
    directory = tmp_path / "keys"
    result = subprocess.run(
        [sys.executable, "-m", "p2ptrain.keys", "generate", "--topology", str(topology_file), "--dir", str(directory)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "p0" in result.stdout
    assert all(secret not in result.stdout + result.stderr for secret in secrets_in(directory))
