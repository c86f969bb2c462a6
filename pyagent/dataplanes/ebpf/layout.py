"""ctypes mirrors of bpf_src/lb_types.h, its constants, and the map table.

tests/test_layout.py compares every struct here with what BCC compiled and
every constant with the header, so a mismatch fails CI instead of corrupting
maps. Addresses and ports in these structs are in network byte order; use
the helpers at the bottom instead of packing them by hand.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import os
import socket
import sys
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from dataclasses import dataclass
from typing import Any

from pyagent.core.model import PROTOCOL_NUMBERS

LAYOUT_VERSION = 2

# Default capacities (lb_types.h); the loader may override them with -D.
SERVICE_MAP_MAX = 262144
BACKEND_MAP_MAX = 262144
REVNAT_MAP_MAX = 65536
SOCK_REVNAT_MAP_MAX = 262144
AFFINITY_MAP_MAX = 65536
STATS_MAP_MAX = 65536
BACKEND_STATS_MAX = 65536
LC_SCAN_MAX = 4  # least-conn scans this many slots, then samples two

MASTER_SLOT = 0
MAX_SLOTS = 65535

SCOPE_EXTERNAL = 0
SCOPE_INTERNAL = 1
SCOPE_NAMES = {SCOPE_EXTERNAL: "external", SCOPE_INTERNAL: "internal"}


class ServiceFlag(enum.IntFlag):
    CLUSTER_IP = 1 << 0
    NODE_PORT = 1 << 1
    EXTERNAL_IP = 1 << 2
    LOADBALANCER = 1 << 3
    LOCAL_ETP = 1 << 4
    LOCAL_ITP = 1 << 5
    AFFINITY = 1 << 6
    SOURCE_RANGE = 1 << 7
    MASQUERADE = 1 << 8
    DROP_NO_BACKEND = 1 << 9


class Algorithm(enum.IntEnum):
    RANDOM = 0
    ROUND_ROBIN = 1
    LEAST_CONN = 2
    MAGLEV = 3


class BackendState(enum.IntEnum):
    ACTIVE = 0
    TERMINATING = 1
    MAINTENANCE = 2


BACKEND_F_LOCAL = 1 << 0

# TC (north-south) path
CT_MAP_MAX = 262144
SRC_RANGE_MAP_MAX = 16384
CT_INGRESS = 0
CT_EGRESS = 1


class CtFlag(enum.IntFlag):
    SNAT = 1 << 0
    DNAT = 1 << 1
    SERVICE = 1 << 2
    CLOSING = 1 << 3


SRC_RANGE_PREFIX_BITS = 32
CONFIG_KEY = 0

# Maglev tables (lb_maglev: rev_nat_id -> inner array of MAGLEV_M backend ids)
MAGLEV_MAP_MAX = 65536
MAGLEV_M = 16381


class ConfigFlag(enum.IntFlag):
    SNAT4 = 1 << 0
    SNAT6 = 1 << 1
    MASQ_CLUSTER_IP4 = 1 << 2  # external traffic to ClusterIPs is masqueraded (IPv4)
    MASQ_CLUSTER_IP6 = 1 << 3
    POD_LB = 1 << 4  # lb_pod_ingress balances pods the socket LB skips
    DSR_TCP = 1 << 5  # remote backends of EXTERNAL frontends answer clients directly
    DSR_UDP = 1 << 6


class SockFlag(enum.IntFlag):
    HOST_NS_ONLY = 1 << 0  # the socket LB translates the host netns's sockets only
    SKIP_LIST = 1 << 1  # and none of the netns cookies in lb_sock_skip


SOCK_CFG_KEY = 0


SNAT_PORT_MIN_DEFAULT = 61000
SNAT_PORT_MAX_DEFAULT = 65535
CT_TIMEOUT_TCP_DEFAULT = 21600
CT_TIMEOUT_OTHER_DEFAULT = 60
CT_TIMEOUT_CLOSING_DEFAULT = 10


class TcStat(enum.IntEnum):
    PASS = 0
    NEW = 1
    CT_HIT = 2
    DROP = 3
    DROP_RANGE = 4
    REJECT = 5
    ERROR = 6
    FRAGMENT = 7
    ICMP_ERROR = 8
    DSR_BACKEND = 9  # a DSR packet for a backend here: reply entry written
    XDP_DONE = 10  # XDP finished the packet (TC skips it)
    XDP_TO_TC = 11  # XDP left the packet to TC untouched


TC_STAT_MAX = 16
SOCK_SKIP_MAP_MAX = 4096

# Decision events (`pyagent monitor`)
MONITOR_SLOTS = 4
MONITOR_KEY = 0
MONITOR_RING_BYTES = 131072


class EventVerdict(enum.IntEnum):
    TRANSLATED = 1
    AFFINITY = 2
    REJECT = 3
    DROP = 4
    NO_BACKEND = 5


class EventOrigin(enum.IntEnum):
    SOCK = 1
    TC = 2
    XDP = 3

# The C names of the constants above, for the header comparison test.
C_CONSTANTS: dict[str, int] = {
    "LB_LAYOUT_VERSION": LAYOUT_VERSION,
    "LB_SERVICE_MAP_MAX": SERVICE_MAP_MAX,
    "LB_BACKEND_MAP_MAX": BACKEND_MAP_MAX,
    "LB_REVNAT_MAP_MAX": REVNAT_MAP_MAX,
    "LB_SOCK_REVNAT_MAP_MAX": SOCK_REVNAT_MAP_MAX,
    "LB_AFFINITY_MAP_MAX": AFFINITY_MAP_MAX,
    "LB_STATS_MAP_MAX": STATS_MAP_MAX,
    "LB_LC_SCAN_MAX": LC_SCAN_MAX,
    "LB_BACKEND_STATS_MAX": BACKEND_STATS_MAX,
    "LB_MASTER_SLOT": MASTER_SLOT,
    "LB_MAX_SLOTS": MAX_SLOTS,
    "LB_SCOPE_EXTERNAL": SCOPE_EXTERNAL,
    "LB_SCOPE_INTERNAL": SCOPE_INTERNAL,
    **{f"LB_F_{f.name}": int(f) for f in ServiceFlag},
    **{f"LB_ALG_{a.name}": int(a) for a in Algorithm},
    **{f"LB_BACKEND_{s.name}": int(s) for s in BackendState},
    "LB_BACKEND_F_LOCAL": BACKEND_F_LOCAL,
    "LB_CT_MAP_MAX": CT_MAP_MAX,
    "LB_SRC_RANGE_MAP_MAX": SRC_RANGE_MAP_MAX,
    "LB_CT_INGRESS": CT_INGRESS,
    "LB_CT_EGRESS": CT_EGRESS,
    **{f"LB_CT_F_{f.name}": int(f) for f in CtFlag},
    "LB_SRC_RANGE_PREFIX_BITS": SRC_RANGE_PREFIX_BITS,
    "LB_CONFIG_KEY": CONFIG_KEY,
    "LB_MAGLEV_MAP_MAX": MAGLEV_MAP_MAX,
    "LB_MAGLEV_M": MAGLEV_M,
    **{f"LB_CFG_F_{f.name}": int(f) for f in ConfigFlag},
    "LB_SNAT_PORT_MIN_DEFAULT": SNAT_PORT_MIN_DEFAULT,
    "LB_SNAT_PORT_MAX_DEFAULT": SNAT_PORT_MAX_DEFAULT,
    "LB_CT_TIMEOUT_TCP_DEFAULT": CT_TIMEOUT_TCP_DEFAULT,
    "LB_CT_TIMEOUT_OTHER_DEFAULT": CT_TIMEOUT_OTHER_DEFAULT,
    "LB_CT_TIMEOUT_CLOSING_DEFAULT": CT_TIMEOUT_CLOSING_DEFAULT,
    **{f"LB_TC_STAT_{t.name}": int(t) for t in TcStat},
    "LB_TC_STAT_MAX": TC_STAT_MAX,
    "LB_SOCK_SKIP_MAP_MAX": SOCK_SKIP_MAP_MAX,
    "LB_MONITOR_SLOTS": MONITOR_SLOTS,
    "LB_MONITOR_KEY": MONITOR_KEY,
    "LB_MONITOR_RING_BYTES": MONITOR_RING_BYTES,
    **{f"LB_EV_{v.name}": int(v) for v in EventVerdict},
    **{f"LB_EV_FROM_{o.name}": int(o) for o in EventOrigin},
}


class V6Addr(ctypes.Union):
    _fields_ = [("addr", c_uint8 * 16), ("p32", c_uint32 * 4), ("p64", c_uint64 * 2)]


class Lb4Key(ctypes.Structure):
    _fields_ = [
        ("address", c_uint32),
        ("dport", c_uint16),
        ("backend_slot", c_uint16),
        ("proto", c_uint8),
        ("scope", c_uint8),
        ("pad", c_uint8 * 2),
    ]


class Lb6Key(ctypes.Structure):
    _fields_ = [
        ("address", V6Addr),
        ("dport", c_uint16),
        ("backend_slot", c_uint16),
        ("proto", c_uint8),
        ("scope", c_uint8),
        ("pad", c_uint8 * 2),
    ]


class LbService(ctypes.Structure):
    _fields_ = [
        ("backend_id", c_uint32),
        ("affinity_timeout", c_uint32),
        ("count", c_uint16),
        ("qcount", c_uint16),
        ("rev_nat_id", c_uint32),
        ("flags", c_uint16),
        ("algorithm", c_uint8),
        ("pad", c_uint8),
    ]


class Lb4Backend(ctypes.Structure):
    _fields_ = [
        ("address", c_uint32),
        ("port", c_uint16),
        ("proto", c_uint8),
        ("state", c_uint8),
        ("flags", c_uint8),
        ("zone", c_uint8),
        ("pad", c_uint8 * 2),
    ]


class Lb6Backend(ctypes.Structure):
    _fields_ = [
        ("address", V6Addr),
        ("port", c_uint16),
        ("proto", c_uint8),
        ("state", c_uint8),
        ("flags", c_uint8),
        ("zone", c_uint8),
        ("pad", c_uint8 * 2),
    ]


class Lb4ReverseNat(ctypes.Structure):
    _fields_ = [("address", c_uint32), ("port", c_uint16), ("pad", c_uint16)]


class Lb6ReverseNat(ctypes.Structure):
    _fields_ = [("address", V6Addr), ("port", c_uint16), ("pad", c_uint16), ("pad2", c_uint32)]


class Lb4SockKey(ctypes.Structure):
    _fields_ = [
        ("cookie", c_uint64),
        ("address", c_uint32),
        ("port", c_uint16),
        ("pad", c_uint16),
    ]


class Lb6SockKey(ctypes.Structure):
    _fields_ = [
        ("cookie", c_uint64),
        ("address", V6Addr),
        ("port", c_uint16),
        ("pad", c_uint16),
        ("pad2", c_uint32),
    ]


class Lb4SockVal(ctypes.Structure):
    _fields_ = [("address", c_uint32), ("port", c_uint16), ("pad", c_uint16),
                ("rev_nat_id", c_uint32)]


class Lb6SockVal(ctypes.Structure):
    _fields_ = [
        ("address", V6Addr),
        ("port", c_uint16),
        ("pad", c_uint16),
        ("rev_nat_id", c_uint32),
    ]


class LbAffinityKey(ctypes.Structure):
    _fields_ = [
        ("client", c_uint64),
        ("rev_nat_id", c_uint32),
        ("netns", c_uint8),
        ("pad", c_uint8 * 3),
    ]


class LbAffinityVal(ctypes.Structure):
    _fields_ = [("last_used", c_uint64), ("backend_id", c_uint32), ("pad", c_uint32)]


class LbAffinityMatchKey(ctypes.Structure):
    _fields_ = [("backend_id", c_uint32), ("rev_nat_id", c_uint32), ("scope", c_uint8),
                ("pad", c_uint8 * 3)]


class LbSvcStats(ctypes.Structure):
    _fields_ = [("selected", c_uint64), ("no_backend", c_uint64), ("errors", c_uint64)]


class Lb4CtKey(ctypes.Structure):
    _fields_ = [
        ("saddr", c_uint32),
        ("daddr", c_uint32),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("proto", c_uint8),
        ("stage", c_uint8),
        ("pad", c_uint8 * 2),
    ]


class Lb6CtKey(ctypes.Structure):
    _fields_ = [
        ("saddr", V6Addr),
        ("daddr", V6Addr),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("proto", c_uint8),
        ("stage", c_uint8),
        ("pad", c_uint8 * 2),
    ]


class Lb4CtVal(ctypes.Structure):
    _fields_ = [
        ("saddr", c_uint32),
        ("daddr", c_uint32),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("backend_id", c_uint32),
        ("expires", c_uint64),
        ("rev_nat_id", c_uint32),
        ("flags", c_uint8),
        ("pad", c_uint8 * 3),
    ]


class Lb6CtVal(ctypes.Structure):
    _fields_ = [
        ("saddr", V6Addr),
        ("daddr", V6Addr),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("backend_id", c_uint32),
        ("expires", c_uint64),
        ("rev_nat_id", c_uint32),
        ("flags", c_uint8),
        ("pad", c_uint8 * 3),
    ]


class Lb4SrcRangeKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", c_uint32),
        ("rev_nat_id", c_uint32),
        ("address", c_uint32),
    ]


class Lb6SrcRangeKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", c_uint32),
        ("rev_nat_id", c_uint32),
        ("address", V6Addr),
    ]


class LbNodeConfig(ctypes.Structure):
    _fields_ = [
        ("snat_ip4", c_uint32),
        ("snat_port_min", c_uint16),
        ("snat_port_max", c_uint16),
        ("snat_ip6", V6Addr),
        ("ct_timeout_tcp", c_uint32),
        ("ct_timeout_other", c_uint32),
        ("ct_timeout_closing", c_uint32),
        ("flags", c_uint32),
    ]


class LbSockConfig(ctypes.Structure):
    _fields_ = [
        ("host_netns_cookie", c_uint64),
        ("flags", c_uint32),
        ("pad", c_uint32),
    ]


class LbDsr4Opt(ctypes.Structure):
    """The DSR IPv4 option (a packet format, not a map entry; packet.py
    builds and parses it)."""

    _fields_ = [("type", c_uint8), ("len", c_uint8), ("port", c_uint16), ("addr", c_uint32)]


class LbDsr6Hdr(ctypes.Structure):
    _fields_ = [
        ("nexthdr", c_uint8),
        ("hdrlen", c_uint8),
        ("type", c_uint8),
        ("len", c_uint8),
        ("port", c_uint16),
        ("addr", c_uint8 * 16),
        ("pad_type", c_uint8),
        ("pad_len", c_uint8),
    ]


class LbTcStat(ctypes.Structure):
    _fields_ = [("packets", c_uint64)]


class LbMonitor(ctypes.Structure):
    _fields_ = [
        ("mask", c_uint32),
        ("pad", c_uint32),
        ("lost", c_uint64),
        ("owner_pid", c_uint32 * MONITOR_SLOTS),
        ("owner_start", c_uint64 * MONITOR_SLOTS),
    ]


class LbEvent(ctypes.Structure):
    _fields_ = [
        ("time_ns", c_uint64),
        ("netns_cookie", c_uint64),
        ("client", V6Addr),
        ("frontend", V6Addr),
        ("backend", V6Addr),
        ("client_port", c_uint16),
        ("frontend_port", c_uint16),
        ("backend_port", c_uint16),
        ("pad", c_uint16),
        ("rev_nat_id", c_uint32),
        ("backend_id", c_uint32),
        ("family", c_uint8),
        ("proto", c_uint8),
        ("verdict", c_uint8),
        ("origin", c_uint8),
        ("pad2", c_uint8 * 4),
    ]


class NoValue(ctypes.Structure):
    """Key and value of a ring buffer map: none (size 0)."""

    _fields_: list = []


# C struct name -> mirror, for the layout test.
C_STRUCTS: dict[str, type[ctypes.Structure] | type[ctypes.Union]] = {
    "lb_v6addr": V6Addr,
    "lb4_key": Lb4Key,
    "lb6_key": Lb6Key,
    "lb_service": LbService,
    "lb4_backend": Lb4Backend,
    "lb6_backend": Lb6Backend,
    "lb4_reverse_nat": Lb4ReverseNat,
    "lb6_reverse_nat": Lb6ReverseNat,
    "lb4_sock_key": Lb4SockKey,
    "lb6_sock_key": Lb6SockKey,
    "lb4_sock_val": Lb4SockVal,
    "lb6_sock_val": Lb6SockVal,
    "lb_affinity_key": LbAffinityKey,
    "lb_affinity_val": LbAffinityVal,
    "lb_svc_stats": LbSvcStats,
    "lb_affinity_match_key": LbAffinityMatchKey,
    "lb4_ct_key": Lb4CtKey,
    "lb6_ct_key": Lb6CtKey,
    "lb4_ct_val": Lb4CtVal,
    "lb6_ct_val": Lb6CtVal,
    "lb4_src_range_key": Lb4SrcRangeKey,
    "lb6_src_range_key": Lb6SrcRangeKey,
    "lb_node_config": LbNodeConfig,
    "lb_tc_stat": LbTcStat,
    "lb_sock_config": LbSockConfig,
    "lb_dsr4_opt": LbDsr4Opt,
    "lb_dsr6_hdr": LbDsr6Hdr,
    "lb_monitor": LbMonitor,
    "lb_event": LbEvent,
}

# Maps: bpf_src/lib/maps.h declares the same names (checked by a test).

MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LPM_TRIE = 11
MAP_TYPE_ARRAY_OF_MAPS = 12
MAP_TYPE_HASH_OF_MAPS = 13
MAP_TYPE_SK_STORAGE = 24
MAP_TYPE_RINGBUF = 27

MAP_F_NO_PREALLOC = 1  # BPF_F_NO_PREALLOC

MAPS_SUBDIR = "maps"  # <bpffs>/maps/<pin name>
LINKS_SUBDIR = "links"  # <bpffs>/links/<program name>


@dataclass(frozen=True)
class MapSpec:
    name: str  # C variable and kernel map name
    key: type
    value: type
    map_type: int
    capacity_define: str  # -D that sets max_entries
    # maps.h's max_entries (the capacity define's default), map flags and
    # the inner-map template of a map of maps: what pyagent.dataplanes.ebpf.
    # map_pins creates a map with (tests/test_map_pins.py holds them against
    # the maps BCC makes of the header)
    entries: int = 0
    flags: int = 0
    inner: str = ""

    @property
    def pin_name(self) -> str:
        return f"{self.name}_v{LAYOUT_VERSION}"

    def pin_path(self, bpffs: str) -> str:
        return os.path.join(bpffs, MAPS_SUBDIR, self.pin_name)


MAPS: dict[str, MapSpec] = {
    m.name: m
    for m in (
        MapSpec("lb4_services", Lb4Key, LbService, MAP_TYPE_HASH, "LB_SERVICE_MAP_MAX",
                SERVICE_MAP_MAX),
        MapSpec("lb6_services", Lb6Key, LbService, MAP_TYPE_HASH, "LB_SERVICE_MAP_MAX",
                SERVICE_MAP_MAX),
        MapSpec("lb4_backends", c_uint32, Lb4Backend, MAP_TYPE_HASH, "LB_BACKEND_MAP_MAX",
                BACKEND_MAP_MAX),
        MapSpec("lb6_backends", c_uint32, Lb6Backend, MAP_TYPE_HASH, "LB_BACKEND_MAP_MAX",
                BACKEND_MAP_MAX),
        MapSpec("lb4_revnat", c_uint32, Lb4ReverseNat, MAP_TYPE_HASH, "LB_REVNAT_MAP_MAX",
                REVNAT_MAP_MAX),
        MapSpec("lb6_revnat", c_uint32, Lb6ReverseNat, MAP_TYPE_HASH, "LB_REVNAT_MAP_MAX",
                REVNAT_MAP_MAX),
        MapSpec("lb4_sockrev", Lb4SockKey, Lb4SockVal, MAP_TYPE_LRU_HASH,
                "LB_SOCK_REVNAT_MAP_MAX", SOCK_REVNAT_MAP_MAX),
        MapSpec("lb6_sockrev", Lb6SockKey, Lb6SockVal, MAP_TYPE_LRU_HASH,
                "LB_SOCK_REVNAT_MAP_MAX", SOCK_REVNAT_MAP_MAX),
        MapSpec("lb_affinity", LbAffinityKey, LbAffinityVal, MAP_TYPE_LRU_HASH,
                "LB_AFFINITY_MAP_MAX", AFFINITY_MAP_MAX),
        MapSpec("lb_svc_stats", c_uint32, LbSvcStats, MAP_TYPE_PERCPU_ARRAY,
                "LB_STATS_MAP_MAX", STATS_MAP_MAX),
        MapSpec("lb_be_stats", c_uint32, c_uint64, MAP_TYPE_PERCPU_ARRAY,
                "LB_BACKEND_STATS_MAX", BACKEND_STATS_MAX),
        MapSpec("lb_aff_match", LbAffinityMatchKey, c_uint8, MAP_TYPE_HASH,
                "LB_SERVICE_MAP_MAX", SERVICE_MAP_MAX),
        MapSpec("lb_rr", c_uint32, c_uint32, MAP_TYPE_PERCPU_ARRAY, "LB_STATS_MAP_MAX",
                STATS_MAP_MAX),
        MapSpec("lb_be_conns", c_uint32, c_uint64, MAP_TYPE_HASH, "LB_BACKEND_MAP_MAX",
                BACKEND_MAP_MAX),
        MapSpec("lb_sock_cfg", c_uint32, LbSockConfig, MAP_TYPE_ARRAY, "", 1),
        MapSpec("lb_sock_skip", c_uint64, c_uint8, MAP_TYPE_HASH, "LB_SOCK_SKIP_MAP_MAX",
                SOCK_SKIP_MAP_MAX),
        MapSpec("lb_sk_backend", ctypes.c_int, c_uint32, MAP_TYPE_SK_STORAGE, "",
                flags=MAP_F_NO_PREALLOC),
        # decision events: listener mask, ring template, one ring per monitor
        MapSpec("lb_monitor", c_uint32, LbMonitor, MAP_TYPE_ARRAY, "", 1),
        MapSpec("lb_mon_ring", NoValue, NoValue, MAP_TYPE_RINGBUF, "", MONITOR_RING_BYTES),
        MapSpec("lb_mon_rings", c_uint32, c_uint32, MAP_TYPE_ARRAY_OF_MAPS, "",
                MONITOR_SLOTS, inner="lb_mon_ring"),
    )
}

# Maps only the TC programs declare (bpf_src/lib/tc_maps.h); pinned in the
# same directory. The socket LB never creates them.
TC_MAPS: dict[str, MapSpec] = {
    m.name: m
    for m in (
        MapSpec("lb4_ct", Lb4CtKey, Lb4CtVal, MAP_TYPE_LRU_HASH, "LB_CT_MAP_MAX", CT_MAP_MAX),
        MapSpec("lb6_ct", Lb6CtKey, Lb6CtVal, MAP_TYPE_LRU_HASH, "LB_CT_MAP_MAX", CT_MAP_MAX),
        MapSpec("lb4_srcrange", Lb4SrcRangeKey, c_uint8, MAP_TYPE_LPM_TRIE,
                "LB_SRC_RANGE_MAP_MAX", SRC_RANGE_MAP_MAX, MAP_F_NO_PREALLOC),
        MapSpec("lb6_srcrange", Lb6SrcRangeKey, c_uint8, MAP_TYPE_LPM_TRIE,
                "LB_SRC_RANGE_MAP_MAX", SRC_RANGE_MAP_MAX, MAP_F_NO_PREALLOC),
        MapSpec("lb_node_config", c_uint32, LbNodeConfig, MAP_TYPE_ARRAY, "", 1),
        MapSpec("lb_tc_stats", c_uint32, LbTcStat, MAP_TYPE_PERCPU_ARRAY, "", TC_STAT_MAX),
        # Maglev: the inner-map template (never filled) and rev_nat_id ->
        # inner map (value: an fd on update, the map id on lookup).
        MapSpec("lb_maglev_inner", c_uint32, c_uint32, MAP_TYPE_ARRAY, "", MAGLEV_M),
        MapSpec("lb_maglev", c_uint32, c_uint32, MAP_TYPE_HASH_OF_MAPS, "LB_MAGLEV_MAP_MAX",
                MAGLEV_MAP_MAX, inner="lb_maglev_inner"),
    )
}

# Address and port encoding (network byte order in the structs).

def be16(port: int) -> int:
    """Host port -> the u16 whose memory holds it in network order."""
    return socket.htons(port)


def from_be16(value: int) -> int:
    return socket.ntohs(value)


def ip4(address: str) -> int:
    """Dotted quad -> the u32 whose memory holds it in network order."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET, address), sys.byteorder)


def from_ip4(value: int) -> str:
    return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, sys.byteorder))


def ip6(address: str) -> V6Addr:
    out = V6Addr()
    ctypes.memmove(out.addr, socket.inet_pton(socket.AF_INET6, address), 16)
    return out


def from_ip6(value: V6Addr) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes(value.addr))


def proto_number(proto: int | str) -> int:
    return PROTOCOL_NUMBERS[proto.upper()] if isinstance(proto, str) else proto


def service_key(
    vip: str, port: int, proto: int | str, slot: int = MASTER_SLOT, scope: int = SCOPE_INTERNAL
) -> Lb4Key | Lb6Key:
    """The services-map key of a frontend slot; the family follows vip."""
    if ipaddress.ip_address(vip).version == 4:
        return Lb4Key(ip4(vip), be16(port), slot, proto_number(proto), scope)
    return Lb6Key(ip6(vip), be16(port), slot, proto_number(proto), scope)


def backend_value(
    address: str, port: int, proto: int | str, state: int = BackendState.ACTIVE,
    flags: int = 0, zone: int = 0,
) -> Lb4Backend | Lb6Backend:
    if ipaddress.ip_address(address).version == 4:
        return Lb4Backend(ip4(address), be16(port), proto_number(proto), state, flags, zone)
    return Lb6Backend(ip6(address), be16(port), proto_number(proto), state, flags, zone)




_ADDRESS_FIELDS = {"address", "saddr", "daddr", "snat_ip4", "snat_ip6"}
_PORT_FIELDS = {"port", "dport", "sport"}


def to_dict(obj: Any) -> Any:
    """A JSON-friendly view of a mirror: addresses as text, ports in host
    order, padding left out. Plain ints pass through."""
    if isinstance(obj, int | float | str) or obj is None:
        return obj
    if isinstance(obj, list):
        return [to_dict(o) for o in obj]
    out: dict[str, Any] = {}
    for name, _ctype in obj._fields_:
        if name.startswith("pad"):
            continue
        value = getattr(obj, name)
        if name in _ADDRESS_FIELDS:
            out[name] = from_ip6(value) if isinstance(value, V6Addr) else from_ip4(value)
        elif name in _PORT_FIELDS:
            out[name] = from_be16(value)
        elif isinstance(value, ctypes.Array):
            out[name] = list(value)
        else:
            out[name] = to_dict(value)
    return out
