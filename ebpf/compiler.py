"""Compile BPF C with BCC at run time; options are -D defines, never text edits."""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Mapping
from typing import Any

DefineValue = str | int | bool | None
# BCC's debug flag that prints the rewritten, preprocessed source to stderr.
_DEBUG_PREPROCESSOR = 0x4


def _bcc():
    import bcc  # Debian's python3-bpfcc; imported late so pure code needs no BCC

    return bcc


def c_string(value: str) -> str:
    """value as a C string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cflags(include_dirs: list[str], defines: Mapping[str, DefineValue]) -> list[str]:
    """-I and -D flags. str values become C string literals, bools 1/0,
    None a bare -DNAME."""
    # BCC runs clang from the kernel build directory: make paths absolute.
    flags = [f"-I{os.path.abspath(d)}" for d in include_dirs]
    for name, value in defines.items():
        if value is None:
            flags.append(f"-D{name}")
        elif isinstance(value, bool):
            flags.append(f"-D{name}={int(value)}")
        elif isinstance(value, int):
            flags.append(f"-D{name}={value}")
        else:
            flags.append(f"-D{name}={c_string(value)}")
    return flags


def compile_file(
    src_file: str,
    include_dirs: list[str] | None = None,
    defines: Mapping[str, DefineValue] | None = None,
    debug: int = 0,
    debug_info: bool = True,
) -> Any:
    """A bcc.BPF for src_file. Creates (or reuses pinned) maps, loads nothing.

    debug_info False compiles without -g (no BTF, no line info): a third
    less time for a large program, but a map that needs BTF to be created
    (sk_storage) can then only be reused from a pin."""
    src_dir = os.path.dirname(os.path.abspath(src_file))
    flags = cflags(include_dirs or [src_dir], defines or {})
    if not debug_info:
        flags.append("-g0")  # after BCC's own -g: the last one counts
    return _bcc().BPF(src_file=src_file.encode(), cflags=flags, debug=debug)


def preprocess(
    src_file: str,
    include_dirs: list[str] | None = None,
    defines: Mapping[str, DefineValue] | None = None,
) -> str:
    """The BPF C text as BCC compiles it (after preprocessing and BCC's
    rewrite), for `pyagent bpf print`.

    This compiles in this process, so the caller must give defines that
    create no pinned maps (e.g. the programs module's print mode)."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            b = compile_file(src_file, include_dirs, defines, debug=_DEBUG_PREPROCESSOR)
            b.cleanup()
            error = None
        except Exception as e:  # BCC raises bare Exception; clang wrote why
            error = e
        finally:
            ctypes.CDLL(None).fflush(None)  # C stdio buffers of BCC's messages
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    if error is not None:
        raise RuntimeError(f"compiling {src_file}:\n{text}") from error
    return text


def load_prog(b: Any, func_name: str, prog_type: int, attach_type: int = -1) -> int:
    """Load one function of a compiled module with its expected attach type;
    returns the program fd (owned by b)."""
    try:
        fn = b.load_func(func_name.encode(), prog_type, attach_type=attach_type)
    except Exception as e:  # BCC raises bare Exception with the verifier log on stderr
        raise RuntimeError(f"loading BPF program {func_name}: {e}") from e
    return fn.fd


PROG_TYPE_SCHED_CLS = 3
PROG_TYPE_XDP = 6
PROG_TYPE_CGROUP_SOCK_ADDR = 18
