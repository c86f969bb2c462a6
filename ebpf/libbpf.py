"""cffi (ABI mode) bindings to the low-level bpf() wrappers of libbpf.so.1.

libbcc does not export these. ABI mode needs the exact struct layouts of
libbpf 1.1's <bpf/bpf.h> and of <linux/bpf.h> (info structs):
tests/test_libbpf.py compares them with a gcc build against those headers.
Every call raises OSError(errno, message) on failure.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass

import cffi

CDEF = """
typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;

struct bpf_map_batch_opts {
    size_t sz;
    __u64 elem_flags;
    __u64 flags;
};

struct bpf_link_create_opts {
    size_t sz;
    __u32 flags;
    void *iter_info;
    __u32 iter_info_len;
    __u32 target_btf_id;
    union {
        struct { __u64 bpf_cookie; } perf_event;
        struct {
            __u32 flags;
            __u32 cnt;
            const char **syms;
            const unsigned long *addrs;
            const __u64 *cookies;
        } kprobe_multi;
        struct { __u64 cookie; } tracing;
    };
};

struct bpf_map_create_opts {
    size_t sz;
    __u32 btf_fd;
    __u32 btf_key_type_id;
    __u32 btf_value_type_id;
    __u32 btf_vmlinux_value_type_id;
    __u32 inner_map_fd;
    __u32 map_flags;
    __u64 map_extra;
    __u32 numa_node;
    __u32 map_ifindex;
};

struct bpf_link_update_opts {
    size_t sz;
    __u32 flags;
    __u32 old_prog_fd;
};

struct bpf_prog_query_opts {
    size_t sz;
    __u32 query_flags;
    __u32 attach_flags;
    __u32 *prog_ids;
    __u32 prog_cnt;
    __u32 *prog_attach_flags;
};

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    __u32 data_size_in;
    __u32 data_size_out;
    const void *ctx_in;
    void *ctx_out;
    __u32 ctx_size_in;
    __u32 ctx_size_out;
    __u32 retval;
    int repeat;
    __u32 duration;
    __u32 flags;
    __u32 cpu;
    __u32 batch_size;
};

/* <linux/bpf.h> info structs, as far as pyagent reads them. The kernel
 * accepts a shorter info_len and fills only that much. */
struct bpf_map_info {
    __u32 type;
    __u32 id;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
    char name[16];
    __u32 ifindex;
    __u32 btf_vmlinux_value_type_id;
    __u64 netns_dev;
    __u64 netns_ino;
    __u32 btf_id;
    __u32 btf_key_type_id;
    __u32 btf_value_type_id;
    __u32 pad;
    __u64 map_extra;
};

struct bpf_prog_info {
    __u32 type;
    __u32 id;
    __u8 tag[8];
    __u32 jited_prog_len;
    __u32 xlated_prog_len;
    __u64 jited_prog_insns;
    __u64 xlated_prog_insns;
    __u64 load_time;
    __u32 created_by_uid;
    __u32 nr_map_ids;
    __u64 map_ids;
    char name[16];
};

struct bpf_link_info {
    __u32 type;
    __u32 id;
    __u32 prog_id;
    __u32 pad;
    union {
        struct { __u64 cgroup_id; __u32 attach_type; } cgroup;
        struct { __u32 netns_ino; __u32 attach_type; } netns;
        __u64 raw[4];
    };
};

int bpf_map_create(int map_type, const char *map_name, __u32 key_size, __u32 value_size,
                   __u32 max_entries, const void *opts);
int bpf_btf_load(const void *btf_data, size_t btf_size, const void *opts);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys,
                         void *values, __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_link_create(int prog_fd, int target_fd, int attach_type,
                    const struct bpf_link_create_opts *opts);
int bpf_link_update(int link_fd, int new_prog_fd, const struct bpf_link_update_opts *opts);
int bpf_link_detach(int link_fd);
int bpf_prog_attach(int prog_fd, int attachable_fd, int type, unsigned int flags);
int bpf_prog_detach2(int prog_fd, int attachable_fd, int type);
int bpf_prog_query_opts(int target_fd, int type, struct bpf_prog_query_opts *opts);
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
int bpf_prog_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);
int libbpf_probe_bpf_map_type(int map_type, const void *opts);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
_lib = None

# <linux/bpf.h> values used here
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_LINK_TYPE_CGROUP = 3


def lib():
    """The dlopen()ed libbpf.so.1, loaded on first use."""
    global _lib
    if _lib is None:
        _lib = ffi.dlopen("libbpf.so.1")
    return _lib


def _check(ret: int, what: str) -> int:
    # libbpf 1.x returns -errno (and sets errno); keep both paths honest.
    if ret < 0:
        err = -ret if ret != -1 else (ffi.errno or _errno.EIO)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _buf(data: bytes | bytearray | memoryview | None, size: int | None = None):
    """A cffi char buffer holding data (or size zero bytes); None -> NULL."""
    if data is None and size is None:
        return ffi.NULL
    if data is None:
        return ffi.new("char[]", size)
    return ffi.from_buffer(data)


def map_create(
    map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
    flags: int = 0, inner_map_fd: int | None = None,
    btf: tuple[int, int, int] | None = None,
) -> int:
    """A new map; returns its fd. inner_map_fd: the template of a map of maps;
    btf: (BTF fd, key type id, value type id), which some types need."""
    opts = ffi.NULL
    if flags or inner_map_fd is not None or btf is not None:
        opts = ffi.new("struct bpf_map_create_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_create_opts")
        opts.map_flags = flags
        if inner_map_fd is not None:
            opts.inner_map_fd = inner_map_fd
        if btf is not None:
            opts.btf_fd, opts.btf_key_type_id, opts.btf_value_type_id = btf
    return _check(
        lib().bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries,
                             opts),
        f"bpf_map_create({name})",
    )


def btf_load(data: bytes) -> int:
    """Load a raw BTF blob (ebpf.btf); returns its fd."""
    return _check(lib().bpf_btf_load(ffi.from_buffer(data), len(data), ffi.NULL),
                  "bpf_btf_load")


def probe_map_type(map_type: int) -> int:
    """libbpf's probe: 1 when the kernel has the map type, 0 when not, <0 on error."""
    return int(lib().libbpf_probe_bpf_map_type(map_type, ffi.NULL))


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin({path})")


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"bpf_obj_get({path})")


def map_lookup_elem(fd: int, key, value) -> bool:
    """Fill the writable buffer value; False when the key is absent."""
    ret = lib().bpf_map_lookup_elem(fd, ffi.from_buffer(key), ffi.from_buffer(value))
    if ret == -_errno.ENOENT:
        return False
    _check(ret, "bpf_map_lookup_elem")
    return True


def map_update_elem(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _check(
        lib().bpf_map_update_elem(fd, ffi.from_buffer(key), ffi.from_buffer(value), flags),
        "bpf_map_update_elem",
    )


def map_delete_elem(fd: int, key) -> bool:
    """False when the key was absent."""
    ret = lib().bpf_map_delete_elem(fd, ffi.from_buffer(key))
    if ret == -_errno.ENOENT:
        return False
    _check(ret, "bpf_map_delete_elem")
    return True


def map_get_next_key(fd: int, key, next_key) -> bool:
    """key None starts at the beginning; False at the end of the map."""
    ret = lib().bpf_map_get_next_key(
        fd, ffi.NULL if key is None else ffi.from_buffer(key), ffi.from_buffer(next_key)
    )
    if ret == -_errno.ENOENT:
        return False
    _check(ret, "bpf_map_get_next_key")
    return True


def _batch_opts(elem_flags: int = 0):
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    opts.elem_flags = elem_flags
    return opts


def map_update_batch(fd: int, keys, values, count: int, elem_flags: int = BPF_ANY) -> int:
    """Write count entries from packed key/value buffers; returns count.

    On error the OSError carries how many entries went in as .processed."""
    n = ffi.new("__u32 *", count)
    ret = lib().bpf_map_update_batch(
        fd, ffi.from_buffer(keys), ffi.from_buffer(values), n, _batch_opts(elem_flags)
    )
    try:
        _check(ret, "bpf_map_update_batch")
    except OSError as e:
        e.processed = n[0]  # type: ignore[attr-defined]
        raise
    return n[0]


def map_delete_batch(fd: int, keys, count: int) -> int:
    """Delete count packed keys; returns count (ENOENT stops the batch)."""
    n = ffi.new("__u32 *", count)
    ret = lib().bpf_map_delete_batch(fd, ffi.from_buffer(keys), n, _batch_opts())
    try:
        _check(ret, "bpf_map_delete_batch")
    except OSError as e:
        e.processed = n[0]  # type: ignore[attr-defined]
        raise
    return n[0]


def map_lookup_batch(
    fd: int, in_batch, out_batch, keys, values, count: int
) -> tuple[int, bool]:
    """One step of a batched dump: (entries read, more to come).

    in_batch is None on the first call, then the previous out_batch
    (both opaque buffers of at least the key size)."""
    n = ffi.new("__u32 *", count)
    ret = lib().bpf_map_lookup_batch(
        fd,
        ffi.NULL if in_batch is None else ffi.from_buffer(in_batch),
        ffi.from_buffer(out_batch),
        ffi.from_buffer(keys),
        ffi.from_buffer(values),
        n,
        _batch_opts(),
    )
    if ret == -_errno.ENOENT:
        return n[0], False
    _check(ret, "bpf_map_lookup_batch")
    return n[0], True


def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
    opts = ffi.new("struct bpf_link_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_link_create_opts")
    opts.flags = flags
    return _check(
        lib().bpf_link_create(prog_fd, target_fd, attach_type, opts),
        f"bpf_link_create(attach_type={attach_type})",
    )


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int | None = None) -> None:
    """Swap the link's program atomically (BPF_F_REPLACE when old_prog_fd)."""
    opts = ffi.new("struct bpf_link_update_opts *")
    opts.sz = ffi.sizeof("struct bpf_link_update_opts")
    if old_prog_fd is not None:
        opts.flags = 1 << 2  # BPF_F_REPLACE
        opts.old_prog_fd = old_prog_fd
    _check(lib().bpf_link_update(link_fd, new_prog_fd, opts), "bpf_link_update")


def link_detach(link_fd: int) -> None:
    _check(lib().bpf_link_detach(link_fd), "bpf_link_detach")


BPF_F_ALLOW_MULTI = 2


def prog_attach(prog_fd: int, target_fd: int, attach_type: int,
                flags: int = BPF_F_ALLOW_MULTI) -> None:
    """Legacy BPF_PROG_ATTACH (kernels without BPF links for the target)."""
    _check(lib().bpf_prog_attach(prog_fd, target_fd, attach_type, flags), "bpf_prog_attach")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _check(lib().bpf_prog_detach2(prog_fd, target_fd, attach_type), "bpf_prog_detach2")


def prog_query(target_fd: int, attach_type: int, query_flags: int = 0) -> list[int]:
    """Ids of the programs attached to target_fd (e.g. a cgroup) for a type."""
    cap = 64
    while True:
        opts = ffi.new("struct bpf_prog_query_opts *")
        opts.sz = ffi.sizeof("struct bpf_prog_query_opts")
        opts.query_flags = query_flags
        buf = ffi.new("__u32[]", cap)
        opts.prog_ids = buf
        opts.prog_cnt = cap
        ret = lib().bpf_prog_query_opts(target_fd, attach_type, opts)
        if ret == -_errno.ENOSPC:
            cap *= 4
            continue
        _check(ret, f"bpf_prog_query(attach_type={attach_type})")
        return [buf[i] for i in range(opts.prog_cnt)]


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data_out: bytes
    duration_ns: int


def prog_test_run(
    prog_fd: int, data_in: bytes, repeat: int = 1, data_out_size: int | None = None
) -> TestRunResult:
    """BPF_PROG_TEST_RUN with a packet: the program's verdict and output packet."""
    out_size = data_out_size if data_out_size is not None else len(data_in) + 256
    din = ffi.new("char[]", data_in)
    dout = ffi.new("char[]", out_size)
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    opts.data_in = din
    opts.data_size_in = len(data_in)
    opts.data_out = dout
    opts.data_size_out = out_size
    opts.repeat = repeat
    _check(lib().bpf_prog_test_run_opts(prog_fd, opts), "bpf_prog_test_run")
    return TestRunResult(
        retval=opts.retval,
        data_out=bytes(ffi.buffer(dout, opts.data_size_out)),
        duration_ns=opts.duration,
    )


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    tag: bytes
    name: str


@dataclass(frozen=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    cgroup_id: int  # cgroup links only, else 0
    attach_type: int  # cgroup links only, else 0


def _info(fd: int, ctype: str):
    info = ffi.new(f"struct {ctype} *")
    size = ffi.new("__u32 *", ffi.sizeof(f"struct {ctype}"))
    _check(lib().bpf_obj_get_info_by_fd(fd, info, size), "bpf_obj_get_info_by_fd")
    return info


def map_info(fd: int) -> MapInfo:
    i = _info(fd, "bpf_map_info")
    return MapInfo(
        i.type, i.id, i.key_size, i.value_size, i.max_entries, i.map_flags,
        ffi.string(i.name).decode(errors="replace"),
    )


def prog_info(fd: int) -> ProgInfo:
    i = _info(fd, "bpf_prog_info")
    return ProgInfo(i.type, i.id, bytes(i.tag), ffi.string(i.name).decode(errors="replace"))


def link_info(fd: int) -> LinkInfo:
    i = _info(fd, "bpf_link_info")
    if i.type == BPF_LINK_TYPE_CGROUP:
        return LinkInfo(i.type, i.id, i.prog_id, i.cgroup.cgroup_id, i.cgroup.attach_type)
    return LinkInfo(i.type, i.id, i.prog_id, 0, 0)


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")


def map_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(map_id), f"bpf_map_get_fd_by_id({map_id})")
