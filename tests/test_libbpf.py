"""ebpf/: cffi layouts against the real headers, and the bindings, bpffs and
typed maps against the running kernel."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
import subprocess
import tempfile

import pytest

from ebpf import bpffs, cgroup, libbpf
from ebpf.maps import Map, possible_cpus

# struct -> fields (gcc member designators) whose offsets must match the headers.
CHECKED = {
    "bpf_map_batch_opts": ["sz", "elem_flags", "flags"],
    "bpf_link_create_opts": ["sz", "flags", "iter_info", "iter_info_len", "target_btf_id",
                             "perf_event", "kprobe_multi.cookies", "tracing.cookie"],
    "bpf_link_update_opts": ["sz", "flags", "old_prog_fd"],
    "bpf_map_create_opts": ["sz", "btf_fd", "btf_key_type_id", "btf_value_type_id",
                            "btf_vmlinux_value_type_id", "inner_map_fd", "map_flags",
                            "map_extra", "numa_node", "map_ifindex"],
    "bpf_prog_query_opts": ["sz", "query_flags", "attach_flags", "prog_ids", "prog_cnt",
                            "prog_attach_flags"],
    "bpf_test_run_opts": ["sz", "data_in", "data_out", "data_size_in", "data_size_out",
                          "ctx_in", "ctx_out", "ctx_size_in", "ctx_size_out", "retval",
                          "repeat", "duration", "flags", "cpu", "batch_size"],
    "bpf_map_info": ["type", "id", "key_size", "value_size", "max_entries", "map_flags",
                     "name", "ifindex", "netns_dev", "btf_id", "map_extra"],
    "bpf_prog_info": ["type", "id", "tag", "load_time", "nr_map_ids", "map_ids", "name"],
    "bpf_link_info": ["type", "id", "prog_id", "cgroup.cgroup_id", "cgroup.attach_type",
                      "netns.attach_type"],
}
# Our declarations of these may be a prefix of the kernel's (it accepts that).
PREFIX_ONLY = {"bpf_map_info", "bpf_prog_info", "bpf_link_info"}
ENUMS = {
    **{f"BPF_{t.name}": int(t) for t in cgroup.AttachType},
    "BPF_LINK_TYPE_CGROUP": libbpf.BPF_LINK_TYPE_CGROUP,
    "BPF_MAP_TYPE_HASH": 1, "BPF_MAP_TYPE_PERCPU_ARRAY": 6, "BPF_MAP_TYPE_LRU_HASH": 9,
}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_cffi_layouts_match_headers(tmp_path):
    prog = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/bpf.h>",
            "#include <bpf/bpf.h>", "int main(void) {"]
    for name, fields in CHECKED.items():
        prog.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for f in fields:
            prog.append(f'printf("{name}.{f} %zu\\n", offsetof(struct {name}, {f}));')
    for name in ENUMS:
        prog.append(f'printf("{name} %d\\n", (int){name});')
    prog.append("return 0; }")
    (tmp_path / "l.c").write_text("\n".join(prog))
    subprocess.run(["gcc", "-o", str(tmp_path / "l"), str(tmp_path / "l.c")], check=True)
    out = subprocess.run([str(tmp_path / "l")], capture_output=True, text=True, check=True)
    real = dict(line.split() for line in out.stdout.splitlines())
    ffi = libbpf.ffi
    for name, fields in CHECKED.items():
        size = ffi.sizeof(f"struct {name}")
        if name in PREFIX_ONLY:
            assert size <= int(real[name]), name
        else:
            assert size == int(real[name]), name
        for f in fields:
            off = ffi.offsetof(f"struct {name}", *f.split("."))
            assert off == int(real[f"{name}.{f}"]), f"{name}.{f}"
    for name, value in ENUMS.items():
        assert int(real[name]) == value, name


@pytest.fixture
def private_bpffs():
    d = tempfile.mkdtemp(prefix="pyagent-test-bpffs-")
    mounted = False
    try:
        bpffs.mount(d)
        mounted = True
        yield d
    finally:
        if mounted:
            bpffs.umount(d)
        os.rmdir(d)


class Val(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint64), ("b", ctypes.c_uint16), ("pad", ctypes.c_uint8 * 6)]


@pytest.mark.root
def test_pin_and_get_round_trip(private_bpffs):
    assert bpffs.is_bpffs(private_bpffs)
    assert not bpffs.ensure(os.path.join(private_bpffs, "sub"))  # already bpffs
    fd = libbpf.map_create(1, "pyagent_t", 4, 16, 8)
    try:
        path = os.path.join(private_bpffs, "sub", "dir", "m")
        bpffs.pin(fd, path)
        assert bpffs.list_pins(os.path.join(private_bpffs, "sub")) == [path]
        fd2 = libbpf.obj_get(path)
        try:
            assert libbpf.map_info(fd2).id == libbpf.map_info(fd).id
            assert libbpf.map_info(fd2).name == "pyagent_t"
        finally:
            os.close(fd2)
    finally:
        os.close(fd)
    assert bpffs.unpin(path) and not bpffs.unpin(path)
    bpffs.remove_empty_dirs(os.path.join(private_bpffs, "sub"))
    assert not os.path.exists(os.path.join(private_bpffs, "sub"))
    with pytest.raises(FileNotFoundError):
        libbpf.obj_get(path)


@pytest.mark.root
def test_batch_update_lookup_delete():
    fd = libbpf.map_create(1, "pyagent_batch", 4, ctypes.sizeof(Val), 20000)
    with Map(fd, ctypes.c_uint32, Val) as m:
        assert m.max_entries == 20000 and not m.percpu
        pairs = [(ctypes.c_uint32(i), Val(i * 3, i & 0xFFFF)) for i in range(12000)]
        assert m.update_many(pairs) == 12000
        got = {k.value: (v.a, v.b) for k, v in m.items()}
        assert got == {i: (i * 3, i & 0xFFFF) for i in range(12000)}
        assert m.get(ctypes.c_uint32(7)).a == 21
        assert m.get(ctypes.c_uint32(99999)) is None
        # Missing keys are skipped, present ones deleted.
        gone = [ctypes.c_uint32(i) for i in (5, 99999, 6, 7)]
        assert m.delete_many(gone) == 3
        assert m.count() == 11997
        raw = dict(m.items_raw())
        assert raw[struct.pack("<I", 8)] == bytes(Val(24, 8))
        m.set(ctypes.c_uint32(5), Val(1, 2))
        with pytest.raises(FileExistsError):
            m.set(ctypes.c_uint32(5), Val(1, 2), flags=libbpf.BPF_NOEXIST)
        assert m.clear() == 11998 and m.count() == 0
        with pytest.raises(ValueError):
            Map(libbpf.map_create(1, "pyagent_bad", 8, 16, 4), ctypes.c_uint32, Val)


@pytest.mark.root
@pytest.mark.parametrize("err", [524, errno.EINVAL, errno.EOPNOTSUPP])
def test_bulk_writes_fall_back_where_the_kernel_has_no_batch_ops(monkeypatch, err):
    """A map type without batch ops answers the kernel's internal ENOTSUPP
    (524; LPM tries on 5.10, for one): entries then go one at a time."""
    from ebpf import libbpf as lb

    def refuse(_fd, _keys, _values_or_count, count=None, *_rest):
        e = OSError(err, "no batch ops")
        # as bpf() leaves it when it refuses the op: the count untouched
        e.processed = count if count is not None else _values_or_count
        raise e

    fd = libbpf.map_create(1, "pyagent_nobatch", 4, ctypes.sizeof(Val), 64)
    with Map(fd, ctypes.c_uint32, Val) as m:
        monkeypatch.setattr(lb, "map_update_batch", refuse)
        monkeypatch.setattr(lb, "map_delete_batch", refuse)
        assert m.update_many((ctypes.c_uint32(i), Val(i, 1)) for i in range(10)) == 10
        assert m.get(ctypes.c_uint32(9)).a == 9
        assert m.delete_many([ctypes.c_uint32(1), ctypes.c_uint32(50)]) == 1
        assert m.count() == 9


@pytest.mark.root
def test_percpu_array_values_per_cpu():
    fd = libbpf.map_create(6, "pyagent_pcpu", 4, 8, 4)
    with Map(fd, ctypes.c_uint32, ctypes.c_uint64) as m:
        n = possible_cpus()
        assert m.percpu and m.ncpus == n
        m.set(ctypes.c_uint32(1), [ctypes.c_uint64(c + 1) for c in range(n)])
        assert [v.value for v in m.get(ctypes.c_uint32(1))] == list(range(1, n + 1))
        items = dict((k.value, [x.value for x in v]) for k, v in m.items())
        assert items[1] == list(range(1, n + 1)) and items[0] == [0] * n


TC_PROG = rb"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

int mark_ipv4(struct __sk_buff *skb)
{
    __u16 proto = 0;
    __u8 mark = 0xAA;

    if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
        return TC_ACT_SHOT;
    if (proto != __constant_htons(ETH_P_IP))
        return TC_ACT_SHOT;
    bpf_skb_store_bytes(skb, 0, &mark, 1, 0);  /* first byte of the dst MAC */
    return TC_ACT_OK;
}
"""


@pytest.mark.root
def test_prog_test_run_verdict_and_packet():
    import bcc

    from ebpf import compiler

    b = bcc.BPF(text=TC_PROG)
    try:
        fd = compiler.load_prog(b, "mark_ipv4", compiler.PROG_TYPE_SCHED_CLS)
        ipv4 = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(46)
        r = libbpf.prog_test_run(fd, ipv4)
        assert r.retval == 0  # TC_ACT_OK
        assert r.data_out == b"\xaa" + ipv4[1:]
        arp = bytes(12) + b"\x08\x06" + bytes(46)
        r = libbpf.prog_test_run(fd, arp, repeat=10)
        assert r.retval == 2  # TC_ACT_SHOT
        assert r.data_out == arp
    finally:
        b.cleanup()


def test_cgroup2_mount_is_found():
    with open("/proc/mounts") as f:
        has_cgroup2 = any(line.split()[2] == "cgroup2" for line in f)
    if not has_cgroup2:
        pytest.skip("no cgroup2 here")
    root = cgroup.cgroup2_mount()
    assert os.path.isfile(os.path.join(root, "cgroup.procs"))
    assert cgroup.is_root_cgroup(root)


@pytest.mark.root
def test_ensure_mounts_a_bpffs_only_where_none_is(tmp_path):
    target = str(tmp_path / "fs")
    assert bpffs.ensure(target)  # mounted here
    try:
        assert bpffs.is_bpffs(target)
        assert not bpffs.ensure(os.path.join(target, "a", "b"))  # inside it: mkdir only
        assert os.path.isdir(os.path.join(target, "a", "b"))
    finally:
        bpffs.umount(target)
    assert not bpffs.is_bpffs(target)


def test_oserror_carries_errno():
    with pytest.raises(OSError) as e:
        libbpf.obj_get("/nonexistent/pyagent/pin")
    assert e.value.errno in (2, 1) and "bpf_obj_get" in str(e.value)
