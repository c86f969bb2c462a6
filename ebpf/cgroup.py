"""cgroup v2: find the hierarchy and attach programs through pinned BPF links.

A link pinned in bpffs keeps the program attached after the agent exits;
on restart the agent adopts the pin and swaps the program in place with
bpf_link_update (atomic, no window without a program). Detaching is
bpf_link_detach plus unpinning.
"""

from __future__ import annotations

import enum
import errno
import os
import urllib.parse
from collections.abc import Iterable

from ebpf import bpffs, libbpf


class AttachType(enum.IntEnum):
    """enum bpf_attach_type values for cgroup hooks (checked by a test)."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1
    CGROUP_INET_SOCK_CREATE = 2
    CGROUP_INET4_BIND = 8
    CGROUP_INET6_BIND = 9
    CGROUP_INET4_CONNECT = 10
    CGROUP_INET6_CONNECT = 11
    CGROUP_INET4_POST_BIND = 12
    CGROUP_INET6_POST_BIND = 13
    CGROUP_UDP4_SENDMSG = 14
    CGROUP_UDP6_SENDMSG = 15
    CGROUP_UDP4_RECVMSG = 19
    CGROUP_UDP6_RECVMSG = 20
    CGROUP_INET4_GETPEERNAME = 29
    CGROUP_INET6_GETPEERNAME = 30
    CGROUP_INET4_GETSOCKNAME = 31
    CGROUP_INET6_GETSOCKNAME = 32
    CGROUP_INET_SOCK_RELEASE = 34


def cgroup2_mount() -> str:
    """The first cgroup2 mount point in /proc/mounts."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return parts[1].encode().decode("unicode_escape")
    raise FileNotFoundError(errno.ENOENT, "no cgroup2 mount in /proc/mounts")


def cgroup_id(path: str) -> int:
    """The kernel's cgroup id: the inode number of the cgroup2 directory."""
    return os.stat(path).st_ino


def is_root_cgroup(path: str) -> bool:
    """True when path is the root of a cgroup2 hierarchy (a mount point)."""
    real = os.path.realpath(path)
    return os.path.ismount(real) or os.stat(real).st_ino == 1


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def attach(prog_fd: int, cgroup: str, attach_type: int, pin_path: str) -> bool:
    """Attach prog_fd to cgroup through a link pinned at pin_path.

    An existing pin for the same cgroup and attach type is updated in place
    (returns True: adopted); a pin for another target, or a link whose
    cgroup is gone, is detached and replaced (returns False)."""
    if os.path.exists(pin_path):
        if _try_update(prog_fd, cgroup, attach_type, pin_path):
            return True
        detach(pin_path)
    cg_fd = _open_dir(cgroup)
    try:
        link_fd = libbpf.link_create(prog_fd, cg_fd, attach_type)
    finally:
        os.close(cg_fd)
    try:
        bpffs.pin(link_fd, pin_path)
    except OSError:
        libbpf.link_detach(link_fd)
        raise
    finally:
        os.close(link_fd)
    return False


def _try_update(prog_fd: int, cgroup: str, attach_type: int, pin_path: str) -> bool:
    link_fd = libbpf.obj_get(pin_path)
    try:
        info = libbpf.link_info(link_fd)
        if (
            info.type != libbpf.BPF_LINK_TYPE_CGROUP
            or info.cgroup_id != cgroup_id(cgroup)
            or info.attach_type != attach_type
        ):
            return False
        try:
            libbpf.link_update(link_fd, prog_fd)
        except OSError as e:
            if e.errno == errno.ENOLINK:  # cgroup removed: link is defunct
                return False
            raise
        return True
    finally:
        os.close(link_fd)


def detach(pin_path: str) -> bool:
    """Detach the link pinned at pin_path and remove the pin; False if absent."""
    try:
        link_fd = libbpf.obj_get(pin_path)
    except FileNotFoundError:
        return False
    try:
        libbpf.link_detach(link_fd)
    except OSError as e:
        if e.errno not in (errno.ENOLINK, errno.EINVAL):
            raise
    finally:
        os.close(link_fd)
    bpffs.unpin(pin_path)
    return True


def link_target(pin_path: str) -> libbpf.LinkInfo:
    """Link info (cgroup id, attach type, program id) of a pinned link."""
    link_fd = libbpf.obj_get(pin_path)
    try:
        return libbpf.link_info(link_fd)
    finally:
        os.close(link_fd)


def query(cgroup: str, attach_type: int) -> list[int]:
    """Ids of programs attached directly to cgroup for attach_type."""
    cg_fd = _open_dir(cgroup)
    try:
        return libbpf.prog_query(cg_fd, attach_type)
    finally:
        os.close(cg_fd)


def query_all(cgroup: str, attach_types: Iterable[int]) -> dict[int, list[int]]:
    """{attach type: program ids} for the given types, empty lists included."""
    return {int(t): query(cgroup, t) for t in attach_types}


# Legacy attachments (BPF_PROG_ATTACH) for kernels without cgroup links. The
# attached program is pinned under a record name that carries the cgroup
# path, so a later attach replaces exactly it and a detach needs no other
# state: <dir>/<name>@<quoted cgroup path>.


def legacy_record(records_dir: str, name: str, cgroup: str) -> str:
    return os.path.join(records_dir, f"{name}@{urllib.parse.quote(cgroup, safe='')}")


def legacy_records(records_dir: str) -> list[tuple[str, str, str]]:
    """[(record path, name, cgroup path)] under records_dir."""
    out = []
    for path in bpffs.list_pins(records_dir):
        name, sep, quoted = os.path.basename(path).partition("@")
        if sep:
            out.append((path, name, urllib.parse.unquote(quoted)))
    return out


def attach_legacy(prog_fd: int, cgroup: str, attach_type: int, record: str) -> bool:
    """Attach prog_fd to cgroup with BPF_PROG_ATTACH (BPF_F_ALLOW_MULTI) and
    pin it at record. A program recorded there before is detached after
    the new one is attached (no moment without one; while both run, the
    second sees the first one's rewritten address and leaves it alone).
    Returns True when it replaced a recorded program."""
    old = libbpf.obj_get(record) if os.path.exists(record) else None
    cg_fd = _open_dir(cgroup)
    try:
        libbpf.prog_attach(prog_fd, cg_fd, attach_type)
        if old is not None:
            try:
                libbpf.prog_detach(old, cg_fd, attach_type)
            except OSError as e:
                if e.errno != errno.ENOENT:  # detached meanwhile
                    raise
    finally:
        os.close(cg_fd)
        if old is not None:
            os.close(old)
    bpffs.unpin(record)
    bpffs.pin(prog_fd, record)
    return old is not None


def detach_legacy(record: str, cgroup: str, attach_type: int) -> bool:
    """Detach the program pinned at record from cgroup and unpin it; False
    if there was no record. A cgroup that is gone took its attachments along."""
    try:
        prog_fd = libbpf.obj_get(record)
    except FileNotFoundError:
        return False
    try:
        if os.path.isdir(cgroup):
            cg_fd = _open_dir(cgroup)
            try:
                libbpf.prog_detach(prog_fd, cg_fd, attach_type)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
            finally:
                os.close(cg_fd)
    finally:
        os.close(prog_fd)
    bpffs.unpin(record)
    return True
