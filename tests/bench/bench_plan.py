"""How long `pyagent plan` takes on a large cluster (default 10,000 services
with 10 endpoints each), and what one endpoint change costs in the store.

    .venv/bin/python -m tests.bench.bench_plan [--services N] [--endpoints M]
    .venv/bin/python tests/bench/bench_plan.py --format json

Reports times only; nothing here asserts on them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from pyagent.cli import plan as cmd_plan
from pyagent.core.config import NodeConfig
from pyagent.core.manifest_dir import load_manifests
from pyagent.core.store import ServiceStore

NODE = "node-0"


def objects(services: int, endpoints: int) -> Iterator[dict]:
    for i in range(services):
        ns, name = f"ns{i % 50}", f"svc{i}"
        # 64,000 ClusterIPs per /16 (172.30, then 172.31: 128,000 in all);
        # one Service in 10 a NodePort while the 2,768 ports of the range last
        spec: dict = {"clusterIP": f"172.{30 + i // 64000}.{i // 250 % 256}.{i % 250 + 1}",
                      "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        if i % 10 == 0 and i // 10 < 2768:
            spec.update(type="NodePort", externalTrafficPolicy="Local")
            spec["ports"][0]["nodePort"] = 30000 + i // 10
        yield {"apiVersion": "v1", "kind": "Service",
               "metadata": {"namespace": ns, "name": name, "resourceVersion": "1"}, "spec": spec}
        yield {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": ns, "name": f"{name}-abcde", "resourceVersion": "1",
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [f"10.{i // 2500}.{i % 2500 // 10}.{j * 10 + i % 10}"],
                              "nodeName": f"node-{(i + j) % 20}",
                              "conditions": {"ready": j != 0, "serving": True,
                                             "terminating": j == 0}}
                             for j in range(endpoints)]}
    yield {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}


def write_manifests(directory: Path, objs: list[dict], fmt: str, files: int = 20) -> None:
    chunk = -(-len(objs) // files)
    for n in range(files):
        part = objs[n * chunk:(n + 1) * chunk]
        if fmt == "json":
            (directory / f"part{n:02}.json").write_text(json.dumps({"kind": "List",
                                                                    "items": part}))
        else:
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            (directory / f"part{n:02}.yaml").write_text(yaml.dump_all(part, Dumper=dumper))


def timed(label: str, fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    print(f"  {label:<44} {time.perf_counter() - start:7.2f} s")
    return out


def run_plan(directory: Path) -> int:
    """`pyagent plan --manifests DIR --node-name NODE --json`, output discarded."""
    parser = argparse.ArgumentParser()
    cmd_plan.register(parser.add_subparsers())
    args = parser.parse_args(["plan", "--manifests", str(directory), "--node-name", NODE,
                              "--json"])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = args.func(args)
    assert code == 0 and out.getvalue().startswith("{")
    return code


def one_change(store: ServiceStore, objs: list[dict], rounds: int = 200) -> float:
    """Mean seconds for one EndpointSlice update plus recomputing that service."""
    slices = [o for o in objs if o["kind"] == "EndpointSlice"][:rounds]
    changes = []
    for sl in slices:
        changed = json.loads(json.dumps(sl))
        changed["metadata"]["resourceVersion"] = "2"
        changed["endpoints"][0]["conditions"]["ready"] = True
        changes.append(changed)
    start = time.perf_counter()
    for changed in changes:
        store.upsert("EndpointSlice", changed)
        for key in store.take_changes():
            store.state_for(key)
    return (time.perf_counter() - start) / len(slices)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    a = p.parse_args()
    print(f"{a.services} services x {a.endpoints} endpoints, manifests as {a.format}")
    objs = list(objects(a.services, a.endpoints))
    with tempfile.TemporaryDirectory() as tmp:
        write_manifests(Path(tmp), objs, a.format)
        total = time.perf_counter()
        timed("pyagent plan --json (load, state, print)", run_plan, Path(tmp))
        total = time.perf_counter() - total
        timed(f"  of which reading the {a.format} files", load_manifests, Path(tmp))
    store = ServiceStore(NodeConfig(node_name=NODE))
    for kind in ("Service", "EndpointSlice", "Node"):
        timed(f"store.replace({kind}) in memory", store.replace, kind,
              [o for o in objs if o["kind"] == kind])
    state = timed("store.full_state() (every service)", store.full_state)
    print(f"  service ports: {len(state.service_ports)}, errors: {len(state.errors)}")
    print(f"  one endpoint change + its service's state: {one_change(store, objs) * 1e3:.3f} ms")
    print(f"plan total: {total:.2f} s")


if __name__ == "__main__":
    main()
