"""The only code of the iptables-based modes that runs iptables binaries.

Behind a small interface so unit tests swap in a fake. The binaries are the
ones on PATH (`iptables` is iptables-nft on current distributions), or the
`-legacy` / `-nft` variants when $PYAGENT_IPTABLES_BACKEND says so (use the
backend the rest of the node uses: the two do not see each other's rules).
The agent runs inside the node's network namespace, so they act on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


def binaries(family: int, backend: str | None = None) -> tuple[str, str, str]:
    """(iptables, iptables-restore, iptables-save) for a family and backend."""
    base = "ip6tables" if family == 6 else "iptables"
    backend = backend if backend is not None else os.environ.get("PYAGENT_IPTABLES_BACKEND", "")
    if backend not in ("", "nft", "legacy"):
        raise ValueError(f"PYAGENT_IPTABLES_BACKEND: expected nft or legacy, got {backend!r}")
    cmd = f"{base}-{backend}" if backend else base
    return cmd, f"{cmd}-restore", f"{cmd}-save"


class IptablesError(RuntimeError):
    pass


class Exec:
    """Runs iptables commands for real."""

    def run(self, argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
        if not check and not shutil.which(argv[0]):
            return ""  # e.g. no iptables-legacy on this node: nothing of ours there
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              check=False)
        if check and proc.returncode != 0:
            raise IptablesError(f"{' '.join(argv[:4])}...: {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else ""

    def ok(self, argv: Sequence[str]) -> bool:
        if not shutil.which(argv[0]):
            return False
        return subprocess.run(list(argv), capture_output=True, check=False).returncode == 0


class Iptables:
    """One IP family's iptables, through `Exec`."""

    def __init__(self, family: int, ex: Exec | None = None, backend: str | None = None) -> None:
        self.family = family
        self.ex = ex or Exec()
        self.cmd, self.restore_cmd, self.save_cmd = binaries(family, backend)

    def chains(self, table: str, prefix: str) -> set[str]:
        """Our chains (by prefix) that exist in `table`."""
        out = self.ex.run([self.save_cmd, "-t", table], check=False)
        return {line[1:].split()[0] for line in out.splitlines()
                if line.startswith(":") and line[1:].startswith(prefix)}

    def restore(self, text: str) -> None:
        if text:
            self.ex.run([self.restore_cmd, "-w", "--noflush"], stdin=text)

    def ensure_rule(self, table: str, chain: str, args: list[str]) -> None:
        if not self.ex.ok([self.cmd, "-w", "-t", table, "-C", chain, *args]):
            self.ex.run([self.cmd, "-w", "-t", table, "-I", chain, "1", *args])

    def delete_rule(self, table: str, chain: str, args: list[str]) -> int:
        n = 0
        while n < 100 and self.ex.ok([self.cmd, "-w", "-t", table, "-D", chain, *args]):
            n += 1
        return n


def restore_text(tables: dict[str, tuple[dict[str, tuple[str, ...]], set[str]]]) -> str:
    """iptables-restore input: per table (chains to (re)write, chains to delete).

    With --noflush a `:CHAIN` line flushes (or creates) just that chain; the
    deleted chains are flushed first so rules being removed in the same
    transaction no longer reference them.
    """
    out: list[str] = []
    for table, (write, delete) in tables.items():
        if not write and not delete:
            continue
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in sorted(write)]
        out += [f":{c} - [0:0]" for c in sorted(delete)]
        for c in sorted(write):
            out += write[c]
        out += [f"-X {c}" for c in sorted(delete)]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
