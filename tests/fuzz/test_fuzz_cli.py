"""`pyagent plan` and `pyagent trace` inputs (issue 12): command lines of
random flags and values, config files (KubeProxyConfiguration-style YAML,
valid keys with random or hostile values, broken or aliased text) and flows
files. Every run ends in an exit code (0, 1 or 2; argparse's own usage
errors exit 2 through SystemExit); no other exception leaves the command."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from pyagent.cli import plan as cmd_plan
from pyagent.cli import trace as cmd_trace

from .common import HOSTILE, TEMPLATES, fuzz, random_value

DIR = Path(tempfile.mkdtemp(prefix="pyagent-fuzz-cli-"))
MANIFESTS = DIR / "m"
MANIFESTS.mkdir()
(MANIFESTS / "all.yaml").write_text(yaml.safe_dump_all([f() for f in TEMPLATES.values()]))
CONFIG, FLOWS = DIR / "config.yaml", DIR / "flows.json"
CONFIG_KEYS = ["hostnameOverride", "nodeName", "nodeIP", "nodeIPs", "clusterCIDR",
               "clusterCIDRs", "localDetector", "nodePortAddresses", "masqueradeAll",
               "featureGates", "syncPeriod", "minSyncPeriod", "healthzBindAddress",
               "metricsBindAddress", "mode", "iptables", "serviceCIDRs", "ipvs", "pyagent",
               "serviceCIDR", "interface_ips", "tracer_local_ips", "localhostNodePorts",
               "conntrack", "unknownKey"]
PYAGENT_KEYS = ["nodeIPs", "bpffs", "cgroup", "interfaces", "serviceCIDRs",
                "localhostNodePorts", "rejectUnknownClusterIPPorts",
                "acceptHealthCheckNodePorts", "lbAlgorithm", "podInterfaces", "parseLimits"]
VALUES = ["10.0.0.1", "192.168.0.2", "fd00::1", "10.0.0.0/8", "::/0", "primary", "30s", "1m",
          "-1s", "0", "TCP", "udp", "SCTP", "GRE", "80", "65536", "-1", "99999999999999999999",
          "", "nan", "node-1", "/nonexistent", str(MANIFESTS), "@", *HOSTILE[:20]]
FLAGS = {"plan": ["--node-name", "--config", "--config", "--json", "--diff", "--manifests"],
         "trace": ["--node-name", "--config", "--config", "--src", "--dst", "--dport",
                   "--proto", "--flows", "--flows", "--json", "--manifests", "--bpf",
                   "--bpffs"]}
SWITCHES = {"--json", "--bpf"}
ADDRS = ["10.0.0.2", "192.168.0.2", "10.96.0.10", "198.51.100.1", "fd00::10", "10.244.0.10"]
VALID_FLAG_VALUES = {"--node-name": ["node-1", "node-2"], "--src": ADDRS, "--dst": ADDRS,
                     "--proto": ["TCP", "udp", "SCTP"], "--dport": ["80", "53", "30080"],
                     "--diff": [str(MANIFESTS)], "--manifests": [str(MANIFESTS)]}
GOOD = {"nodeName": ["node-1"], "nodeIPs": [["192.168.0.2"], ["192.168.0.2", "fd00::2"]],
        "clusterCIDR": ["10.244.0.0/16", "10.244.0.0/16,fd00:244::/64", ""],
        "nodePortAddresses": [["192.168.0.0/24"], ["primary"], []],
        "masqueradeAll": [True, False], "featureGates": [{"PreferSameTrafficDistribution": True}],
        "syncPeriod": ["30s", "1m30s", 5], "localDetector": [{"mode": "none"}, "10.0.0.0/8"],
        "serviceCIDRs": [["10.96.0.0/12"]], "mode": ["iptables", "nftables"],
        "pyagent": [{"nodeIPs": ["192.168.0.2"], "localhostNodePorts": True,
                     "parseLimits": {"maxObjects": 10}}]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyagent")
    sub = p.add_subparsers(dest="command", required=True)
    cmd_plan.register(sub)
    cmd_trace.register(sub)
    return p


PARSER = parser()


def run(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = PARSER.parse_args(argv)
        except SystemExit as exc:  # argparse: a usage error is exit status 2
            assert exc.code in (0, 2)
            return
        code = args.func(args)
    assert code in (0, 1, 2), (argv, code)
    assert "Traceback" not in err.getvalue()


def config_text(rng: random.Random) -> str:
    """Mostly valid settings, some of them replaced by random or hostile ones."""
    data: dict = {k: rng.choice(v) for k, v in GOOD.items() if rng.random() < 0.4}
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        key = rng.choice(CONFIG_KEYS)
        if key == "pyagent":
            data[key] = {rng.choice(PYAGENT_KEYS): rng.choice([rng.choice(VALUES),
                                                              random_value(rng)])
                         for _ in range(rng.randint(0, 3))}
        else:
            data[key] = rng.choice([rng.choice(VALUES), [rng.choice(VALUES)],
                                    random_value(rng)])
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        text = "nodeName: node-1\n"
    if rng.random() < 0.3:
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(["!!binary aGk=", "2024-01-01", "&a [*a]", "{", ".nan",
                                       "~: x", "\n---\n", "!!python/name:os.system"]) + \
            text[at:]
    return text


def flows_text(rng: random.Random) -> str:
    flows = [{k: rng.choice([rng.choice(VALUES), random_value(rng), 80, 30080])
              for k in rng.sample(["src", "dst", "dport", "proto", "x"], rng.randint(0, 5))}
             for _ in range(rng.randint(0, 3))]
    try:
        text = json.dumps(flows)
    except (TypeError, ValueError):
        text = "[]"
    return text if rng.random() < 0.8 else text[:rng.randrange(len(text) + 1)]


@fuzz(800)
@given(command=st.sampled_from(["plan", "trace"]), case=st.integers(0, 2 ** 32))
def test_fuzz_plan_and_trace_command_lines(command: str, case: int) -> None:
    rng = random.Random(case)
    argv = [command, "--manifests", str(MANIFESTS)] if rng.random() < 0.9 else [command]
    for _ in range(rng.randint(0, 4)):
        flag = rng.choice(FLAGS[command])
        if flag in SWITCHES:
            argv.append(flag)
            continue
        if flag == "--config":
            CONFIG.write_text(config_text(rng), encoding="utf-8", errors="surrogatepass")
            value = str(CONFIG)
        elif flag == "--flows":
            FLOWS.write_text(flows_text(rng), encoding="utf-8", errors="surrogatepass")
            value = str(FLOWS)
        elif flag in VALID_FLAG_VALUES and rng.random() < 0.7:
            value = rng.choice(VALID_FLAG_VALUES[flag])
        else:
            value = rng.choice(VALUES)
        argv += [flag, value]
    if command == "trace" and rng.random() < 0.7:
        argv += ["--src", rng.choice(ADDRS * 4 + VALUES), "--dst", rng.choice(ADDRS * 4 + VALUES),
                 "--dport", rng.choice(["80", "53", "30080", "0", "65535", "70000", "-5"])]
    if "\x00" in "".join(argv):  # argv cannot hold NUL
        return
    run(argv)
