"""Files a run writes: atomic replacement for state, line-flushed JSON for metrics.

A file replaced atomically is either the old one or the new one, never half
of each: write a temporary file next to it, fsync, rename over, fsync the
directory so the rename itself survives a crash.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write_bytes(path: str | Path, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically. ``before_rename`` runs once the temporary file is
    complete and synced, before it is put in place: fault-injection tests widen that window. A failure
    (a full disk, a directory that cannot be written) raises OSError naming ``path`` and leaves neither a
    temporary file nor a changed ``path`` behind."""
    path = Path(path)
    try:
        _write_and_replace(path, data, before_rename)
    except OSError as error:
        if error.filename == str(path):
            raise
        # OSError(errno, ...) gives back the same subclass (PermissionError, ...), now naming the file written.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def _write_and_replace(path: Path, data: bytes, before_rename: Callable[[], None] | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass  # the directory itself went away; the next start of the peer removes what is left
        raise
    _sync_directory(path.parent)


def replace_durably(source: str | Path, path: str | Path) -> None:
    """Rename ``source`` over ``path``, the rename itself synced to disk."""
    os.replace(source, path)
    _sync_directory(Path(path).parent)


def _sync_directory(directory_path: Path) -> None:
    directory = os.open(directory_path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path, before_rename: Callable[[], None] | None = None) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), before_rename)


def remove_partial_writes(path: str | Path) -> list[Path]:
    """Delete temporary files an interrupted atomic write of ``path`` left behind; returns them."""
    path = Path(path)
    leftovers = list(path.parent.glob(f".{path.name}.*.tmp"))
    for leftover in leftovers:
        leftover.unlink()
    return leftovers


def rewrite_json_lines(path: str | Path, keep) -> None:
    """Atomically keep only the complete lines whose record satisfies ``keep(record)``."""
    records = [r for r in read_json_lines(path) if keep(r)]
    atomic_write_bytes(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode())


# One encoder for every line: json.dumps with its own separators builds a new one per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


class JsonLines:
    """Append-only JSON lines, flushed per line so a reader (the launcher) sees every round as it ends."""

    def __init__(self, path: str | Path):
        # Bytes, flushed by hand: no text layer on the way, and the buffer still writes a line whole.
        self._file = open(path, "ab")

    def write(self, record: dict) -> None:
        self._file.write((_COMPACT_JSON.encode(record) + "\n").encode("utf-8"))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_json_lines(path: str | Path) -> list[dict]:
    """Every complete line of a JSON-lines file; a torn last line (a peer killed mid-write) is skipped, and so
    is a line damaged on the disk (not a JSON object), rather than making every reader of the run fail."""
    records = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.endswith("\n"):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        records.append(record)
    except FileNotFoundError:
        pass
    return records
