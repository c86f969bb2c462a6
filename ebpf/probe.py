"""What the running kernel's BPF offers, found by asking it (never by version).

Each probe loads or creates the smallest object that needs the feature and
reads the kernel's answer: a one-instruction program with the hook's
expected attach type, a program calling one helper (missing when the
verifier says "invalid func" / "unknown func", as libbpf's own probes
read it), a map of one type, a batch lookup on an empty map, a
BPF_LINK_CREATE with no target (EBADF: the command exists; EINVAL: it does
not). Nothing is attached; every fd is closed again. A full probe takes a
few milliseconds.

PYAGENT_BPF_FEATURES overrides answers, for tests and for operators who
want a node to run a fallback on purpose: "set_retval=0,getpeername=0".
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
from dataclasses import dataclass

from ebpf import libbpf

OVERRIDE_ENV = "PYAGENT_BPF_FEATURES"

_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD, _BPF_LINK_CREATE = 5, 28
_PROG_CGROUP_SOCK, _PROG_SCHED_CLS, _PROG_CGROUP_SOCK_ADDR = 9, 3, 18
_MAP_HASH = 1

# Helpers by enum bpf_func_id (include/uapi/linux/bpf.h).
HELPERS = {
    "get_socket_cookie": 46,
    "get_netns_cookie": 122,
    "sk_storage_get": 107,
    "set_retval": 187,
    "sk_lookup_tcp": 84,
    "skb_change_tail": 38,
    "csum_diff": 28,
    "redirect": 23,
}
# Map types by enum bpf_map_type.
MAP_TYPES = {"hash": 1, "array": 2, "percpu_array": 6, "lru_hash": 9, "lpm_trie": 11,
             "hash_of_maps": 13, "sk_storage": 24, "ringbuf": 27}
# Attach types by enum bpf_attach_type, with the program type they load as.
ATTACH_TYPES = {
    "connect4": (10, _PROG_CGROUP_SOCK_ADDR), "connect6": (11, _PROG_CGROUP_SOCK_ADDR),
    "sendmsg4": (14, _PROG_CGROUP_SOCK_ADDR), "sendmsg6": (15, _PROG_CGROUP_SOCK_ADDR),
    "recvmsg4": (19, _PROG_CGROUP_SOCK_ADDR), "recvmsg6": (20, _PROG_CGROUP_SOCK_ADDR),
    "getpeername4": (29, _PROG_CGROUP_SOCK_ADDR), "getpeername6": (30, _PROG_CGROUP_SOCK_ADDR),
    "sock_release": (34, _PROG_CGROUP_SOCK),
}


@dataclass(frozen=True)
class Features:
    """The answers pyagent's datapaths depend on (True: the kernel has it)."""

    # cgroup hooks
    connect: bool = True         # connect4/6 (4.17)
    sendmsg: bool = True         # udp sendmsg4/6 (4.18)
    recvmsg: bool = True         # udp recvmsg4/6 (5.2)
    getpeername: bool = True     # getpeername4/6 (5.8)
    sock_release: bool = True    # inet sock_release (5.9)
    # helpers at the socket hooks
    set_retval: bool = True      # bpf_set_retval (5.18): chosen errno from connect()
    netns_cookie: bool = True    # bpf_get_netns_cookie (5.7)
    sk_storage: bool = True      # bpf_sk_storage_get at sock_addr hooks
    socket_cookie: bool = True   # bpf_get_socket_cookie at sock_addr hooks (5.7)
    # TC
    tc_helpers: bool = True      # skb_change_tail, csum_diff, redirect
    sk_lookup: bool = True       # bpf_sk_lookup_tcp (informational: unused)
    # objects and commands
    cgroup_links: bool = True    # BPF_LINK_CREATE for cgroups (5.7)
    batch_ops: bool = True       # BPF_MAP_*_BATCH (5.6)
    lru_hash: bool = True
    lpm_trie: bool = True
    hash_of_maps: bool = True
    sk_storage_map: bool = True
    ringbuf: bool = True         # (5.8; informational: unused)
    overridden: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def missing(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)
                if f.type in (bool, "bool") and not getattr(self, f.name)]


class _Attr(ctypes.Structure):
    """The BPF_PROG_LOAD part of union bpf_attr (a stable ABI)."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
                ("pad", ctypes.c_uint8 * 64)]


class _LinkAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint8 * 64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Structure) -> tuple[int, int]:
    """(return value, errno) of one bpf() call."""
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return ret, (ctypes.get_errno() if ret < 0 else 0)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return bytes([code, (src << 4) | dst]) + off.to_bytes(2, "little", signed=True) \
        + imm.to_bytes(4, "little", signed=True)


_MOV_R0_1 = _insn(0xb7, 0, imm=1)  # r0 = 1
_EXIT = _insn(0x95)


def load_program(prog_type: int, insns: bytes, attach_type: int = 0) -> tuple[int, int, str]:
    """(fd or -1, errno, verifier log) of a GPL program of raw instructions."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 14)
    attr = _Attr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                 insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                 log_level=1, log_size=ctypes.sizeof(log), log_buf=ctypes.addressof(log),
                 prog_name=b"pyagent_probe", expected_attach_type=attach_type)
    fd, err = _bpf(_BPF_PROG_LOAD, attr)
    return int(fd), err, log.value.decode(errors="replace")


def _loads(prog_type: int, insns: bytes, attach_type: int = 0) -> tuple[bool, str]:
    fd, err, log = load_program(prog_type, insns, attach_type)
    if fd >= 0:
        os.close(fd)
        return True, log
    if err == errno.EPERM:
        raise PermissionError(err, "probing the kernel's BPF features needs CAP_BPF (root)")
    return False, log


def attach_type_supported(name: str) -> bool:
    attach_type, prog_type = ATTACH_TYPES[name]
    return _loads(prog_type, _MOV_R0_1 + _EXIT, attach_type)[0]


def helper_supported(helper: str, prog_type: int, attach_type: int = 0) -> bool:
    """Whether a program of prog_type may call helper: a program that calls
    it with whatever the registers hold fails for other reasons when the
    helper exists, with "invalid func" / "unknown func" when it does not."""
    call = _insn(0x85, imm=HELPERS[helper])
    ok, log = _loads(prog_type, _MOV_R0_1 + call + _MOV_R0_1 + _EXIT, attach_type)
    if ok:
        return True
    return not any(s in log for s in ("invalid func", "unknown func",
                                       "program of this type cannot use helper"))


def map_type_supported(name: str) -> bool:
    """libbpf's own probe (it builds the BTF that sk_storage needs)."""
    ret = libbpf.probe_map_type(MAP_TYPES[name])
    return ret == 1


def batch_ops_supported() -> bool:
    try:
        fd = libbpf.map_create(_MAP_HASH, "pyagent_probe", 4, 4, 1)
    except OSError:
        return False
    try:
        try:  # an empty map answers ENOENT when the command exists
            libbpf.map_lookup_batch(fd, None, bytearray(4), bytearray(4), bytearray(4), 1)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


def cgroup_links_supported() -> bool:
    """BPF_LINK_CREATE with bad fds: EBADF when the kernel has the command."""
    attr = _LinkAttr(prog_fd=0xFFFFFFFF, target_fd=0xFFFFFFFF, attach_type=10)
    ret, err = _bpf(_BPF_LINK_CREATE, attr)
    if ret >= 0:  # cannot happen with these fds; be tidy anyway
        os.close(ret)
        return True
    return err == errno.EBADF


def _overrides() -> dict[str, bool]:
    out: dict[str, bool] = {}
    names = {f.name for f in dataclasses.fields(Features)}
    for item in filter(None, (s.strip() for s in os.environ.get(OVERRIDE_ENV, "").split(","))):
        name, _, value = item.partition("=")
        if name not in names or name == "overridden" or value not in ("0", "1"):
            raise ValueError(f"{OVERRIDE_ENV}: bad entry {item!r} "
                             f"(want NAME=0|1, NAME one of {sorted(names - {'overridden'})})")
        out[name] = value == "1"
    return out


def raise_memlock_limit() -> None:
    """Kernels before 5.11 charge BPF objects to the user's RLIMIT_MEMLOCK
    (all of root's pinned maps count against this process's limit, 64 KiB
    by default there): lift it, as BCC and libbpf do, or every probe fails
    with EPERM once the agent's maps exist."""
    import contextlib
    import resource

    inf = resource.RLIM_INFINITY
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (inf, inf))
    except (OSError, ValueError):  # no CAP_SYS_RESOURCE: as far as the hard limit goes
        hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def probe() -> Features:
    """Ask the running kernel (needs CAP_BPF or root)."""
    raise_memlock_limit()
    sa = _PROG_CGROUP_SOCK_ADDR
    connect4 = ATTACH_TYPES["connect4"][0]
    found = {
        "connect": attach_type_supported("connect4") and attach_type_supported("connect6"),
        "sendmsg": attach_type_supported("sendmsg4") and attach_type_supported("sendmsg6"),
        "recvmsg": attach_type_supported("recvmsg4") and attach_type_supported("recvmsg6"),
        "getpeername": attach_type_supported("getpeername4")
        and attach_type_supported("getpeername6"),
        "sock_release": attach_type_supported("sock_release"),
        "set_retval": helper_supported("set_retval", sa, connect4),
        "netns_cookie": helper_supported("get_netns_cookie", sa, connect4),
        "sk_storage": helper_supported("sk_storage_get", sa, connect4),
        "socket_cookie": helper_supported("get_socket_cookie", sa, connect4),
        "tc_helpers": all(helper_supported(h, _PROG_SCHED_CLS)
                          for h in ("skb_change_tail", "csum_diff", "redirect")),
        "sk_lookup": helper_supported("sk_lookup_tcp", _PROG_SCHED_CLS),
        "cgroup_links": cgroup_links_supported(),
        "batch_ops": batch_ops_supported(),
        "lru_hash": map_type_supported("lru_hash"),
        "lpm_trie": map_type_supported("lpm_trie"),
        "hash_of_maps": map_type_supported("hash_of_maps"),
        "sk_storage_map": map_type_supported("sk_storage"),
        "ringbuf": map_type_supported("ringbuf"),
    }
    forced = _overrides()
    found.update(forced)
    return Features(**found, overridden=tuple(sorted(forced)))
