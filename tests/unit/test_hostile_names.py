"""Object names never reach the kernel's rule parsers as text (issue 12,
item 6), pure part: names are validated at parse time as the API server
does, and every renderer is safe even without that, because names are only
hashed or passed through an escaped comment. tests/test_hostile_names.py
loads the same corpus into a real kernel."""

from __future__ import annotations

import re
import shlex

import pytest
from hostile import HOSTILE, hostile_state, plain_state

from pyagent.core.config import NodeConfig
from pyagent.core.parse import ParseError, parse_endpoint_slice, parse_service
from pyagent.dataplanes.iptables.dataplane import IptablesDataplane
from pyagent.dataplanes.iptables.rules import Renderer
from pyagent.dataplanes.ipvs.rules import IpvsRenderer
from pyagent.dataplanes.nftables.dataplane import NftablesDataplane
from pyagent.dataplanes.userspace.dataplane import UserspaceDataplane

CFG = NodeConfig(node_name="node-1", node_ips=("10.244.0.1",), cluster_cidrs=("10.244.0.0/16",))
PLAIN_COMMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:/~-]*")


class RecordingExec:
    def __init__(self) -> None:
        self.restores: list[str] = []

    def run(self, argv, stdin=None, check=True) -> str:
        if "restore" in argv[0]:
            self.restores.append(stdin or "")
        return ""

    def ok(self, argv) -> bool:
        return False


class RecordingNft:
    def __init__(self) -> None:
        self.scripts: list[str] = []

    def run(self, script: str) -> None:
        self.scripts.append(script)

    def objects(self):
        return None

    def delete_table(self) -> bool:
        return True


class FakeProxy:
    def __init__(self) -> None:
        self.ports: dict = {}

    def ensure(self, lid, protocol, family, backends, affinity) -> int:
        return self.ports.setdefault(lid, 40000 + len(self.ports))

    def drop(self, lid) -> None:
        self.ports.pop(lid, None)

    def close(self) -> None:
        pass


# --- parse time -------------------------------------------------------------------------

def service(name: object, ns: object = "ns", port_name: object = "http") -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": port_name, "port": 80}]}}


INVALID = [h for h in HOSTILE if h and h not in ("table", "chain")]  # nft keywords are valid names


@pytest.mark.parametrize("bad", INVALID, ids=lambda h: repr(h)[:30])
def test_hostile_names_are_refused_at_parse_time(bad: str) -> None:
    for obj, field in ((service(bad), "metadata.name"), (service("a", ns=bad),
                                                         "metadata.namespace"),
                       (service("a", port_name=bad), "spec.ports[0].name")):
        with pytest.raises(ParseError, match=re.escape(field)) as exc:
            parse_service(obj)
        assert "\n" not in str(exc.value) and "\r" not in str(exc.value)
    es = {"kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": bad, "namespace": "ns",
                       "labels": {"kubernetes.io/service-name": "a"}}}
    with pytest.raises(ParseError, match="metadata.name"):
        parse_endpoint_slice(es)


def test_valid_names_as_the_api_server_takes_them() -> None:
    ok = parse_service(service("a-1", ns="kube-system", port_name="dns-tcp"))
    assert ok.key == ("kube-system", "a-1")
    for name, why in (("1abc", "DNS-1035"), ("a" * 64, "longer than 63"), ("A", "DNS-1035"),
                      ("a.b", "DNS-1035"), ("a-", "DNS-1035")):
        with pytest.raises(ParseError, match=why):
            parse_service(service(name))
    es = {"kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": "web-abc.x", "namespace": "ns",
                       "labels": {"kubernetes.io/service-name": "web"}}}
    assert parse_endpoint_slice(es).name == "web-abc.x"  # subdomains may hold dots


# --- renderers, without the parser's help ------------------------------------------------

def states() -> dict:
    out = {("ns", "plain"): (plain_state(0),)}
    for i, name in enumerate(HOSTILE, 1):
        out[(f"h{i}", name)] = (hostile_state(i, name),)
    return out


def shape(lines: list[str]) -> list[int]:
    """Token counts per line: what a name could change if it escaped."""
    return [len(shlex.split(line)) for line in lines]


def rules_of(restore: str, svc_chains: set[str]) -> list[str]:
    return [line for line in restore.splitlines()
            if line.startswith("-A ") and line.split()[1] in svc_chains]


@pytest.mark.parametrize("mode", ["iptables", "ipvs", "userspace"])
def test_iptables_family_renders_hostile_names_as_plain_comments(mode: str) -> None:
    ex = RecordingExec()
    if mode == "userspace":
        dp = UserspaceDataplane(CFG, ex=ex, families=(4,), proxy=FakeProxy())
    else:
        # ipvs: its helper chains (the virtual servers go by netlink)
        dp = IptablesDataplane(CFG, ex=ex, families=(4,),
                               renderer=IpvsRenderer if mode == "ipvs" else Renderer)
    status = dp.sync(states(), full=True)
    assert all(v is None for v in status.values()), status
    restore = ex.restores[-1]
    prefix = dp.chains.prefix
    for line in restore.splitlines():
        assert line in ("*nat", "*filter", "COMMIT") or line.startswith((":", "-A ", "-X ")), \
            line
        tokens = shlex.split(line)  # iptables-restore's quoting is shell-like
        if line.startswith(("-A", ":", "-X")):
            chain = tokens[1] if line.startswith("-") else tokens[0][1:]
            assert chain.startswith(prefix), line
        if "--comment" in tokens:
            assert PLAIN_COMMENT.fullmatch(tokens[tokens.index("--comment") + 1]), line
        for tok in tokens:
            if tok in ("-j", "-g"):
                target = tokens[tokens.index(tok) + 1]
                assert target.startswith(prefix) or target in (
                    "ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE",
                    "REDIRECT"), line
    # Every hostile Service renders exactly like a plainly named one: same
    # rules, same token counts; only hashes and the comment text differ.
    r = dp.renderers[4]
    plain = r.render(plain_state(1)) if mode != "userspace" else None
    if plain is not None:
        for name in HOSTILE:
            frag = r.render(hostile_state(1, name))
            assert len(frag.nat_chains) == len(plain.nat_chains)
            assert [shape(c) for c in frag.nat_chains.values()] == \
                [shape(c) for c in plain.nat_chains.values()]
            assert shape(frag.services + frag.nodeports + frag.filter) == \
                shape(plain.services + plain.nodeports + plain.filter)


def test_nftables_renders_hostile_names_only_as_hashes() -> None:
    nft = RecordingNft()
    dp = NftablesDataplane(CFG, nft=nft)
    dp.setup()
    status = dp.sync(states(), full=True)
    assert all(v is None for v in status.values()), status
    script = nft.scripts[-1]
    name_re = re.compile(r"(?:cip|ext|svc|svl|sep|fw|aff)-[A-Z2-7]{16}")
    for line in script.splitlines():
        assert line.startswith(("add ", "flush ", "delete ")), line
        assert " inet pyagent " in f"{line} ", line
        for word in re.findall(r"(?:cip|ext|svc|svl|sep|fw|aff)-\S+", line):
            assert name_re.fullmatch(word.rstrip(",;}")), (word, line)
    for name in HOSTILE:
        if len(name) > 3 and name not in ("table", "chain"):
            assert name not in script, name
    # One hostile Service renders the same number of rules as a plain one.
    plain = dp.renderer.render(plain_state(1))
    for name in HOSTILE:
        frag = dp.renderer.render(hostile_state(1, name))
        assert [len(c) for c in frag.chains.values()] == [len(c) for c in plain.chains.values()]
        assert len(frag.elements) == len(plain.elements)


def test_chain_names_of_different_objects_never_collide() -> None:
    from pyagent.dataplanes import text

    # "/" joined the parts: ("a/b", "c") and ("a", "b/c") named the same chain.
    assert text.short_hash("a/b", "c") != text.short_hash("a", "b/c")
    assert text.short_hash("a\\", "/b") != text.short_hash("a\\/", "b")
    # Valid names keep the chain names earlier versions gave them.
    assert text.short_hash("ns", "web", "http", "TCP", 4) == "3QLOSNHTNKWBIVTH"  # as on main
    assert text.comment("ns/web:http/TCP") == "ns/web:http/TCP"
    escaped = text.comment('x"\n-A INPUT -j ACCEPT')
    assert PLAIN_COMMENT.fullmatch(escaped) and escaped.startswith("_x__-A_INPUT_-j_ACCEPT~")
    assert text.comment("-j/-j:-j/TCP").startswith("_-j/-j:-j/TCP~")
    assert len(text.comment("x" * 1000)) < 256  # iptables' comment limit


@pytest.mark.parametrize(("field", "value"), [
    ("cluster_ip", "10.96.0.9 -j ACCEPT"), ("cluster_ip", "fe80::1%x y"),
    ("cluster_ip", "010.96.0.9"), ("cluster_ip", "fd00::9"), ("protocol", "TCP -j ACCEPT"),
    ("port", 0), ("port", True), ("node_port", 70000), ("affinity_timeout", "600; x"),
    ("external_ips", ("1.2.3.4}",)), ("lb_source_ranges", ("203.0.113.1/24",)),
])
def test_non_canonical_values_refuse_only_their_service(field: str, value: object) -> None:
    import dataclasses

    bad = hostile_state(1, "bad", ns="ns", port_name="http")
    bad = dataclasses.replace(bad, service=dataclasses.replace(bad.service, **{field: value}))
    for dp in (IptablesDataplane(CFG, ex=RecordingExec(), families=(4,)),
               NftablesDataplane(CFG, nft=RecordingNft())):
        status = dp.sync({("ns", "good"): (plain_state(2, "good"),), ("ns", "bad"): (bad,)},
                         full=True)
        assert status[("ns", "good")] is None
        assert status[("ns", "bad")] and status[("ns", "bad")].startswith("render failed"), \
            status
        written = (dp.chains.ipt[4].ex.restores[-1] if isinstance(dp, IptablesDataplane)
                   else dp.nft.scripts[-1])
        assert str(value) not in written or isinstance(value, (int, bool))
        assert "10.96.0.3" in written  # the good Service (plain_state(2)) is written
