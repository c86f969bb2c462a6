"""bpffs: find or mount one, and pin / unpin / list BPF objects in it."""

from __future__ import annotations

import ctypes
import errno
import os

from ebpf import libbpf

BPF_FS_MAGIC = 0xCAFE4A11

_libc = ctypes.CDLL(None, use_errno=True)


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) from /proc/self/mounts, in mount order."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                # Mount points escape spaces and friends as octal (\040).
                out.append((parts[1].encode().decode("unicode_escape"), parts[2]))
    return out


def mount_point_of(path: str) -> tuple[str, str] | None:
    """The mount covering path (longest matching mount point) and its type."""
    path = os.path.realpath(path)
    best: tuple[str, str] | None = None
    for mnt, fstype in _mounts():
        covers = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        # Later mounts on the same point hide earlier ones: >= keeps the last.
        if covers and (best is None or len(mnt) >= len(best[0])):
            best = (mnt, fstype)
    return best


def is_bpffs(path: str) -> bool:
    """True when path lies on a bpf filesystem."""
    found = mount_point_of(path)
    return found is not None and found[1] == "bpf"


def mount(path: str) -> None:
    """Mount a new bpffs at path (created if missing)."""
    os.makedirs(path, exist_ok=True)
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t bpf {path}: {os.strerror(err)}")


def umount(path: str) -> None:
    if _libc.umount2(os.fsencode(path), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}")


def ensure(path: str) -> bool:
    """Make path a directory on a bpffs; mount one there when none covers it.

    Returns True when this call mounted one. The mount goes on path itself,
    or, where path cannot be created (e.g. /sys/fs/bpf/x while nothing is
    mounted on the empty /sys/fs/bpf of sysfs), on its deepest existing
    ancestor if that is an empty directory."""
    path = os.path.realpath(path)
    if is_bpffs(path):
        os.makedirs(path, exist_ok=True)
        return False
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        anc = os.path.dirname(path)
        while not os.path.isdir(anc):
            anc = os.path.dirname(anc)
        if os.listdir(anc):
            raise
        mount(anc)
        os.makedirs(path, exist_ok=True)
        return True
    mount(path)
    return True


def pin(fd: int, path: str) -> None:
    """Pin fd at path, creating parent directories (which must be on bpffs)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    libbpf.obj_pin(fd, path)


def unpin(path: str) -> bool:
    """Remove a pin; False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def open_pinned(path: str) -> int:
    """A new fd for the object pinned at path (caller closes it)."""
    return libbpf.obj_get(path)


def list_pins(directory: str) -> list[str]:
    """Pinned objects under directory, recursively, sorted; [] if missing."""
    out = []
    for root, _dirs, files in os.walk(directory):
        out.extend(os.path.join(root, name) for name in files)
    return sorted(out)


def remove_empty_dirs(directory: str) -> None:
    """Remove directory and its sub-directories, deepest first, if empty."""
    if not os.path.isdir(directory):
        return
    for root, _dirs, _files in os.walk(directory, topdown=False):
        try:
            os.rmdir(root)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                raise
