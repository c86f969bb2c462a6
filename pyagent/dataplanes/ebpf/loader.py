"""Loader children: a child process compiles, loads and pins a BPF object,
then exits, and the agent opens the pins, so that BCC and LLVM (about 150 MB
of RSS) never enter the agent and a compiler crash cannot take it down.
Shared by the socket LB's and the TC programs' loads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

from ebpf import bpffs as fs

log = logging.getLogger(__name__)

# A loader child's niceness above the agent's: while it compiles, the agent
# parses its sources and fills the maps, the other half of a start, and on
# a node the workloads come first too. The compiles still get the CPU the
# others leave. The TC programs' the least: while both run, the socket LB's
# (which every Service from pods and the node needs, and which attaches
# first) gets about 20 times their share, so it is done nearly as soon as
# alone (bench_start --tc: the last Service answered 2.36-2.71 s after start
# with niceness 19 here, 2.76-3.03 s with 10; the TC programs as early).
NICE_SOCKET_LB = 5
NICE_TC = 19


def child_started(nice: int) -> None:
    """Called first in a loader child's main: its niceness (see above)."""
    if nice:
        os.nice(nice)


def run_child(module: str, bpffs: str, sizes: Mapping[str, int], what: str,
              extra_args: Sequence[str] = ()) -> str:
    """`python -m MODULE --bpffs DIR --size DEFINE=N...` to its end; raise with
    its stderr if it failed, else log what it said (replaced pins, compiler
    warnings) and return it."""
    fs.ensure(bpffs)
    # stderr to a file, not a pipe: a chatty compiler never blocks on it
    with tempfile.TemporaryFile("w+") as err:
        rc = subprocess.run([sys.executable, "-m", module, "--bpffs", bpffs,
                             *(f"--size={k}={v}" for k, v in sizes.items()), *extra_args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                            text=True, check=False).returncode
        err.seek(0)
        said = err.read().strip()
    if rc != 0:
        raise RuntimeError(f"loading {what} failed:\n{said}")
    for line in said.splitlines():
        log.warning("%s", line)
    return said
