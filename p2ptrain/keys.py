"""CurveZMQ key pairs of a swarm's peers, kept in a keys directory.

A keys directory holds, for each peer id, two files of Z85 text (40
characters and a newline):

    ID.public   the peer's public key; every peer of the swarm needs all of them
    ID.secret   the peer's secret key; only that peer's host should ever hold it

Secret files are created readable by their owner only (0600) and are refused
if other users can read them; the directory is created 0700. A topology file
may pin the public keys instead (``public_key = "..."`` per peer, written by
``pin``); the secret key always comes from a keys directory.

    python -m p2ptrain.keys generate --topology FILE --dir DIR [--force]
    python -m p2ptrain.keys show --dir DIR [--topology FILE]
    python -m p2ptrain.keys pin --topology FILE --dir DIR -o FILE

Nothing here prints or logs a secret key, and no error message quotes one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import sys
from pathlib import Path
from typing import Iterable

import zmq

from .config import ConfigError, PeerConfig
from .topology import Topology, TopologyError, dump_topology, load_topology, parse_topology
from .transport import CurveSecurity, TransportError, curve_key_problem, require_curve_support

PUBLIC_SUFFIX = ".public"
SECRET_SUFFIX = ".secret"
SECRET_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
DIRECTORY_MODE = 0o700
# A key file is one key and a newline; reading more than this means the file is something else.
_MOST_BYTES_READ = 1024
# Open flags for new key files: fail on any existing file, and never write through a symlink.
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_HOW_TO_GENERATE = "python -m p2ptrain.keys generate --topology FILE --dir DIR"


class KeyFileError(ValueError):
    """A key file or keys directory that cannot be used; the message says how to fix it."""


def public_key_path(directory: str | Path, peer_id: str) -> Path:
    return Path(directory) / f"{peer_id}{PUBLIC_SUFFIX}"


def secret_key_path(directory: str | Path, peer_id: str) -> Path:
    return Path(directory) / f"{peer_id}{SECRET_SUFFIX}"


# ---- writing ---------------------------------------------------------------------------


def generate(topology: Topology, directory: str | Path, *, force: bool = False) -> dict[str, str]:
    """Write a fresh key pair for every peer of ``topology`` into ``directory``; returns the
    public keys by peer id. Existing keys are replaced only with ``force``."""
    directory = Path(directory)
    try:
        require_curve_support()
    except TransportError as error:
        raise KeyFileError(str(error)) from None
    _refuse_to_replace(topology, directory, force)
    _make_private_directory(directory)
    public_keys = {}
    for peer_id in topology.ids:
        public, secret = zmq.curve_keypair()
        _write_key_file(secret_key_path(directory, peer_id), secret, SECRET_FILE_MODE)
        _write_key_file(public_key_path(directory, peer_id), public, PUBLIC_FILE_MODE)
        public_keys[peer_id] = public.decode("ascii")
    _sync_directory(directory)
    return public_keys


def generate_own(directory: str | Path, peer_id: str) -> str:
    """A fresh key pair for ``peer_id`` alone, written into ``directory`` (made 0700); returns its public
    key. For a peer that makes its keys where it runs, so that its secret key never travels (p2ptrain.dask)."""
    directory = Path(directory)
    _make_private_directory(directory)
    public, secret = zmq.curve_keypair()
    _write_key_file(secret_key_path(directory, peer_id), secret, SECRET_FILE_MODE)
    _write_key_file(public_key_path(directory, peer_id), public, PUBLIC_FILE_MODE)
    _sync_directory(directory)
    return public.decode("ascii")


def _refuse_to_replace(topology: Topology, directory: Path, force: bool) -> None:
    if force:
        return
    existing = [peer_id for peer_id in topology.ids
                if public_key_path(directory, peer_id).exists() or secret_key_path(directory, peer_id).exists()]
    if existing:
        raise KeyFileError(
            f"{directory} already holds keys for {', '.join(existing)}; new keys would lock out peers still "
            "using the old ones. Pass --force (force=True) to replace them, or choose another --dir"
        )
    pinned = [spec.id for spec in topology.peers if spec.public_key is not None]
    if pinned:
        raise KeyFileError(
            f"the topology pins public keys for {', '.join(pinned)}; new keys would not match them. "
            "Pass --force (force=True) to generate anyway, then pin the new keys with python -m p2ptrain.keys pin"
        )


def _make_private_directory(directory: Path) -> None:
    """Create ``directory`` 0700 (only its leaf; parents get the usual mode), or check an existing one."""
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as error:
        raise KeyFileError(f"cannot create the keys directory {directory}: {error.strerror}") from None
    if not directory.is_dir():
        raise KeyFileError(f"{directory} exists and is not a directory; choose another --dir")
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        # Not changed behind the user's back: it may be a directory they share on purpose.
        raise KeyFileError(
            f"the keys directory {directory} is open to other users (mode {mode:04o}); "
            f"chmod 700 {directory}, or choose a new --dir (it is created 0700)"
        )


def _write_key_file(path: Path, key: bytes, mode: int) -> None:
    """Replace ``path`` with one key, atomically; the file has ``mode`` from the moment it exists,
    so a secret key is never readable by others, not even while being written."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by an interrupted run of this same process id
    descriptor = os.open(temporary, _CREATE_NEW, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(key + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _sync_directory(directory: Path) -> None:
    # The renames themselves must survive a crash, or a peer could find no key after a reboot.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def pin(topology: Topology, public_keys: dict[str, str]) -> Topology:
    """The same topology with every peer's ``public_key`` set from ``public_keys``."""
    peers = tuple(dataclasses.replace(spec, public_key=public_keys[spec.id]) for spec in topology.peers)
    return dataclasses.replace(topology, peers=peers)


# ---- reading ---------------------------------------------------------------------------


def load_public_keys(directory: str | Path, ids: Iterable[str]) -> dict[str, str]:
    """The Z85 public keys of ``ids`` from ``directory``, by peer id."""
    return {peer_id: _read_key(public_key_path(directory, peer_id), peer_id, "public") for peer_id in ids}


def load_secret_key(directory: str | Path, peer_id: str) -> str:
    """``peer_id``'s Z85 secret key from ``directory``; refused if other users could read the file."""
    return _read_key(secret_key_path(directory, peer_id), peer_id, "secret")


def public_keys_of(topology: Topology, directory: str | Path | None) -> dict[str, str]:
    """Every peer's public key: the one the topology pins, else the one in ``directory``."""
    pinned = {spec.id: spec.public_key for spec in topology.peers if spec.public_key is not None}
    unpinned = [peer_id for peer_id in topology.ids if peer_id not in pinned]
    if unpinned and directory is None:
        raise KeyFileError(
            f"no public key for {', '.join(unpinned)}: the topology does not pin them and no keys directory "
            "was given"
        )
    from_directory = load_public_keys(directory, unpinned) if unpinned else {}
    return {peer_id: pinned.get(peer_id) or from_directory[peer_id] for peer_id in topology.ids}


def load_security(topology: Topology, peer_id: str, directory: str | Path) -> CurveSecurity:
    """What a secured peer's transport needs: its own key pair and every peer's public key."""
    peer_keys = public_keys_of(topology, directory)
    secret = load_secret_key(directory, peer_id)
    public = zmq.curve_public(secret.encode("ascii")).decode("ascii")
    if public != peer_keys[peer_id]:
        source = "the topology" if topology.peer(peer_id).public_key else str(public_key_path(directory, peer_id))
        raise KeyFileError(
            f"{secret_key_path(directory, peer_id)} does not belong to {peer_id}'s public key in {source}: "
            "the keys were regenerated on one side. Copy the matching pair (and pin the new public key "
            "if the topology pins keys)"
        )
    try:
        return CurveSecurity(public_key=public, secret_key=secret, peer_keys=peer_keys)
    except TransportError as error:  # e.g. two .public files holding the same key
        raise KeyFileError(str(error)) from None


def _read_key(path: Path, peer_id: str, kind: str) -> str:
    try:
        # Non-blocking, so a FIFO planted under the name fails the regular-file check instead of hanging.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise KeyFileError(_missing_key_message(path, peer_id, kind)) from None
    except OSError as error:
        raise KeyFileError(f"cannot read {path}: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)  # of the open file, so the file read is the file checked
        if not stat.S_ISREG(status.st_mode):
            raise KeyFileError(f"{path} is not a regular file; a key file is one line of Z85 text")
        if kind == "secret":
            _require_private(path, status)
        else:
            _require_unwritable_by_others(path, status)
        content = os.read(descriptor, _MOST_BYTES_READ)
    finally:
        os.close(descriptor)
    try:
        text = content.decode("ascii").strip()
    except UnicodeDecodeError:
        text = None
    problem = "it is not ASCII text" if text is None else curve_key_problem(text)
    if problem:
        raise KeyFileError(
            f"{path} does not hold a CurveZMQ {kind} key: {problem}. Regenerate the keys with {_HOW_TO_GENERATE}"
        )
    return text


def _require_private(path: Path, status: os.stat_result) -> None:
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path} can be read or changed by other users (mode {mode:04o}), and it holds a secret key; "
            f"run chmod 600 {path} (and make sure nobody else has copied it)"
        )


def _require_unwritable_by_others(path: Path, status: os.stat_result) -> None:
    """A public key decides who may speak as its peer: whoever can rewrite the file can put their own key
    there. Group-writable files are refused too (as OpenSSH refuses such authorized_keys), since the group
    may hold other users; the files ``generate`` writes are 0644."""
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise KeyFileError(
            f"{path} can be changed by other users (mode {mode:04o}), and whoever changes it can speak as its "
            f"peer; run chmod 644 {path} (and check that it still holds the key you copied)"
        )


def _missing_key_message(path: Path, peer_id: str, kind: str) -> str:
    if kind == "secret":
        return (f"no secret key for {peer_id}: {path} does not exist. Generate keys with {_HOW_TO_GENERATE}, "
                f"and copy {path.name} (this peer's alone) to this host")
    return (f"no public key for {peer_id}: {path} does not exist. Copy every peer's .public file into "
            f"{path.parent}, pin the keys in the topology (python -m p2ptrain.keys pin), or generate keys "
            f"with {_HOW_TO_GENERATE}")


# ---- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p2ptrain.keys",
        description="CurveZMQ keys of a swarm's peers. Secret keys are never printed.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write a fresh key pair for every peer of a topology")
    make.add_argument("--topology", required=True, help="the topology file")
    make.add_argument("--dir", required=True, help="the keys directory (created 0700)")
    make.add_argument("--force", action="store_true", help="replace keys already in the directory")
    show = commands.add_parser("show", help="print public keys (never secret ones)")
    show.add_argument("--dir", help="the keys directory")
    show.add_argument("--topology", help="show this topology's peers, in its order (pinned keys included)")
    pin_command = commands.add_parser("pin", help="write a copy of a topology with every peer's public_key")
    pin_command.add_argument("--topology", required=True, help="the topology file")
    pin_command.add_argument("--dir", required=True, help="the keys directory holding the .public files")
    pin_command.add_argument("-o", "--output", required=True, help="the topology file to write")
    pin_command.add_argument("--force", action="store_true", help="replace the output file if it exists")
    return parser


def _generate_command(args) -> None:
    topology = load_topology(args.topology)
    public_keys = generate(topology, args.dir, force=args.force)
    print(f"wrote key pairs for {len(public_keys)} peers of {topology.name} in {args.dir}:")
    print(f"  ID{SECRET_SUFFIX}  secret key, readable by you only: copy it to that peer's host and nowhere else")
    print(f"  ID{PUBLIC_SUFFIX}  public key: every peer needs all of them (or pin them in the topology)")
    _print_public_keys(public_keys)


def _show_command(args) -> None:
    if args.topology:
        public_keys = public_keys_of(load_topology(args.topology), args.dir)
    elif args.dir:
        ids = sorted(path.name[:-len(PUBLIC_SUFFIX)] for path in Path(args.dir).glob(f"*{PUBLIC_SUFFIX}"))
        if not ids:
            raise KeyFileError(f"no {PUBLIC_SUFFIX} files in {args.dir}")
        public_keys = load_public_keys(args.dir, ids)
    else:
        raise KeyFileError("show needs --dir, --topology, or both")
    _print_public_keys(public_keys)


def _pin_command(args) -> None:
    output = Path(args.output)
    if output.exists() and not args.force:
        raise KeyFileError(f"{output} exists; pass --force to replace it, or choose another -o")
    topology = load_topology(args.topology)
    pinned = pin(topology, load_public_keys(args.dir, topology.ids))
    text = dump_topology(pinned, f"{topology.name}, with every peer's CurveZMQ public key.")
    parse_topology(text, where=str(output))  # the checks a peer loading it will make, before writing it
    output.write_text(text)
    print(f"wrote {output}: {topology.name} with the public keys of its {topology.size} peers from {args.dir}")


def _print_public_keys(public_keys: dict[str, str]) -> None:
    width = max(len(peer_id) for peer_id in public_keys)
    for peer_id, key in public_keys.items():
        print(f"{peer_id:<{width}}  {key}")


def reachable_by_others(bind: str) -> bool:
    """Whether anything outside this process can connect to ``bind``: inproc:// endpoints never leave it."""
    return not bind.startswith("inproc://")


def check_keys_or_insecure(config: PeerConfig, topology: Topology, peer_id: str) -> None:
    """Secure by default: a peer without --keys starts only when told --insecure, since anyone who reaches its
    port could then send it parameters under any peer's name. inproc:// endpoints never leave the process."""
    bind = topology.peer(peer_id).bind
    if config.keys or config.insecure or not reachable_by_others(bind):
        return
    raise ConfigError(
        f"no --keys: without keys anyone who can reach {bind} could send {peer_id} parameters in any peer's name. "
        f"Make keys with python -m p2ptrain.keys generate --topology {_topology_file(config)} --dir KEYS "
        "and pass --keys KEYS (in the Python API: keys=KEYS), or pass --insecure (insecure=True) to run "
        "without, on a network you trust (docs/security.md)")


def _topology_file(config: PeerConfig) -> str:
    """The topology file to name in advice: the one the peer was given, else a placeholder (the Python API
    may be handed a Topology object, whose name is no file)."""
    return config.topology if config.topology and Path(config.topology).is_file() else "TOPOLOGY_FILE"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"generate": _generate_command, "show": _show_command, "pin": _pin_command}
    try:
        commands[args.command](args)
    except (KeyFileError, TopologyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {error.filename} ({error.strerror or error}); pass a path in a directory that "
              "exists and that you can write to", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
