"""Loader children: a child process compiles, loads and pins a BPF object,
then exits, and the agent opens the pins (BCC and LLVM never enter it).

A child can be started ahead (`start_ahead`, at the very start of `pyagent
run`, before the API client and the first list): the compile, which takes
seconds, then runs while the agent starts up, and `run_child` with the same
module, bpffs and sizes waits for that child instead of starting another.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import IO

from ebpf import bpffs as fs

log = logging.getLogger(__name__)

Key = tuple[str, str, tuple[tuple[str, int], ...]]


class Child:
    """`python -m MODULE --bpffs DIR --size DEFINE=N...`, running."""

    def __init__(self, module: str, bpffs: str, sizes: Mapping[str, int]) -> None:
        fs.ensure(bpffs)
        # stderr to a file, not a pipe: nobody reads it until the child ends
        self._err: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in wait/kill
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--bpffs", bpffs,
             *(f"--size={k}={v}" for k, v in sizes.items())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err, text=True)

    def wait(self, what: str) -> None:
        """Wait for the child; raise with its stderr if it failed, else log
        what it said (replaced pins, compiler warnings)."""
        rc = self.proc.wait()
        self._err.seek(0)
        err = self._err.read().strip()
        self._err.close()
        if rc != 0:
            raise RuntimeError(f"loading {what} failed:\n{err}")
        for line in err.splitlines():
            log.warning("%s", line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._err.close()


_ahead: dict[Key, Child] = {}


def _key(module: str, bpffs: str, sizes: Mapping[str, int]) -> Key:
    return module, bpffs, tuple(sorted(sizes.items()))


def start_ahead(module: str, bpffs: str, sizes: Mapping[str, int]) -> None:
    key = _key(module, bpffs, sizes)
    if key not in _ahead:
        _ahead[key] = Child(module, bpffs, sizes)


def run_child(module: str, bpffs: str, sizes: Mapping[str, int], what: str) -> None:
    """The child started ahead with these arguments, else a new one; waited for."""
    child = _ahead.pop(_key(module, bpffs, sizes), None) or Child(module, bpffs, sizes)
    child.wait(what)


def abandon_ahead() -> None:
    """Stop children started ahead that nobody waited for (the agent is
    exiting before its dataplane setup)."""
    while _ahead:
        _ahead.popitem()[1].kill()
