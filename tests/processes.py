"""Real peer processes for tests: start them, read their log lines as they come, never wait without a deadline."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class LoggedProcess:
    """A child process whose output (stdout and stderr together) is read line by line as it comes."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT):
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}), cwd=cwd,
        )
        self.lines: list[str] = []
        self._pending = b""
        os.set_blocking(self.process.stdout.fileno(), False)

    @classmethod
    def peer(cls, args: list[str], env: dict[str, str] | None = None) -> "LoggedProcess":
        return cls([sys.executable, "-m", "p2ptrain.peer", *args], env)

    @classmethod
    def launcher(cls, args: list[str]) -> "LoggedProcess":
        return cls([sys.executable, str(ROOT / "scripts" / "launch_swarm.py"), *args])

    def wait_for_line(self, pattern: str, timeout: float, after: int = 0) -> str:
        """Block until a log line (from line number ``after`` on) matches ``pattern``; fail after
        ``timeout`` seconds or if the process ends."""
        regex = re.compile(pattern)
        for line in self.lines[after:]:
            if regex.search(line):
                return line
        for line in self._read_lines(timeout):
            if regex.search(line):
                return line
        state = "exited" if self.process.poll() is not None else f"no such line within {timeout}s"
        raise AssertionError(f"process {state} before logging /{pattern}/:\n" + "\n".join(self.lines[-20:]))

    def _read_lines(self, timeout: float):
        """Yield log lines as they arrive, until the log ends or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(remaining):
                    continue
                chunk = self.process.stdout.read()
                if chunk is None:
                    continue
                if not chunk:  # end of the log: the process closed stderr
                    yield from self._split(b"\n")
                    return
                yield from self._split(chunk)

    def _split(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        *complete, self._pending = data.split(b"\n")
        new = [line.decode(errors="replace") for line in complete if line]
        self.lines.extend(new)
        return new

    def finish(self, timeout: float) -> int:
        """Wait for exit (reading the rest of the log); kill and fail if it takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        for _ in self._read_lines(timeout):
            pass
        try:
            return self.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"process still running after {timeout}s:\n" + "\n".join(self.lines[-20:])) from None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def log(self) -> str:
        return "\n".join(self.lines)


def run_launcher(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "launch_swarm.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
    )


def process_state(pid: int) -> str | None:
    """The kernel's state letter of ``pid`` (R, S, T for stopped, Z for a zombie...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    # A zombie has released its memory and sockets; only its exit status waits for a parent to read it.
    return process_state(pid) not in (None, "Z", "X")


def poll(condition, timeout: float) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds: for states no log line announces (a process
    gone, a port freed), looked at ten times a second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()
