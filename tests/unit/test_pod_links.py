"""Pod interface patterns and the rtnetlink link messages the watcher reads."""

from __future__ import annotations

import struct

from pyagent.dataplanes.ebpf import pod_links as P


def link_msg(kind: int, name: str | None, extra_attr: bool = True) -> bytes:
    attrs = b""
    if extra_attr:  # IFLA_MTU first: the name is not always the first attribute
        attrs += struct.pack("=HHI", 8, 4, 1500)
    if name is not None:
        raw = name.encode() + b"\0"
        attrs += struct.pack("=HH", 4 + len(raw), P.IFLA_IFNAME) + raw
        attrs += b"\0" * (-len(attrs) % 4)
    body = struct.pack("=BxHiII", 0, 1, 7, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_patterns_split_from_fixed_names() -> None:
    names = ("veth+", "cni0", "lxc+", "+")
    assert P.prefixes(names) == ("veth", "lxc")  # a bare "+" matches nothing
    assert P.fixed(names) == ("cni0",)


def test_link_events_from_one_datagram() -> None:
    data = (link_msg(P.RTM_NEWLINK, "veth12ab") + link_msg(P.RTM_DELLINK, "lxc9")
            + link_msg(20, "ignored") + link_msg(P.RTM_NEWLINK, None))
    assert list(P.link_events(data)) == [(P.RTM_NEWLINK, "veth12ab"), (P.RTM_DELLINK, "lxc9")]


def test_truncated_or_bogus_messages_end_the_parse() -> None:
    good = link_msg(P.RTM_NEWLINK, "veth1")
    assert list(P.link_events(good[:-3])) == []
    assert list(P.link_events(struct.pack("=IHHII", 4, P.RTM_NEWLINK, 0, 0, 0))) == []


def test_only_new_matching_links_are_attached() -> None:
    got: list[str] = []
    w = P.PodLinkWatcher(["veth+"], got.append)
    try:
        w.seen.add("veth0")
        for kind, name in [(P.RTM_NEWLINK, "veth0"), (P.RTM_NEWLINK, "eth1"),
                           (P.RTM_NEWLINK, "veth1"), (P.RTM_NEWLINK, "veth1"),
                           (P.RTM_DELLINK, "veth1"), (P.RTM_NEWLINK, "veth1")]:
            w._event(kind, name)
    finally:
        w.stop()
    assert got == ["veth1", "veth1"]  # once, and again after it was deleted and re-made
