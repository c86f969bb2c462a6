"""Bad-input probes (issue 12): objects attempted, served, lost. Reports
numbers only; the tests assert the behaviour.

    .venv/bin/python tests/bench/probe_inputs.py
    # the same probes against another checkout's pyagent (e.g. main's):
    .venv/bin/python tests/bench/probe_inputs.py --tree /path/to/checkout

- nonjson: one file per YAML construct JSON cannot hold (tests/unit/
  test_inputs.py NOT_JSON), each with one bad and one good Service, read by
  the agent's directory source into a store.
- keys: a good Service, then a wrongly typed update of it (tests/unit/
  test_store.py BAD_UPDATES): is the last good version still served?
- bomb: a nested-alias file next to a good one, under a 1 GiB address-space
  and 60 s CPU limit.
"""

from __future__ import annotations

import copy
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
if "--tree" in sys.argv:  # whose pyagent to probe
    sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1])
else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyagent.core.config import NodeConfig  # noqa: E402
from pyagent.core.store import ServiceStore  # noqa: E402


def _read_into_store(directory: Path) -> tuple[ServiceStore, str | None]:
    from pyagent.sources.manifests import ManifestSource

    store = ServiceStore(NodeConfig(node_name="n"), log_invalid=False)
    try:
        ManifestSource(directory, store).sync_once()
    except Exception as exc:  # noqa: BLE001 - what main does is the point
        return store, f"{type(exc).__name__}: {str(exc)[:60]}"
    return store, None


def nonjson() -> dict:
    from test_inputs import NOT_JSON, service

    d = Path(tempfile.mkdtemp())
    for i, (where, value, _) in enumerate(NOT_JSON):
        (d / f"f{i}.yaml").write_text(service(f"bad{i}", 2 * i, **{where: value}) + "---\n"
                                      + service(f"good{i}", 2 * i + 1))
    store, exc = _read_into_store(d)
    served = sum(1 for k in store.service_keys() if k[1].startswith("good") and store.state_for(k))
    refused = sum(1 for e in store.error_messages() if "Service ns/bad" in e)
    return {"attempted": 2 * len(NOT_JSON), "good_served": served,
            "bad_refused_by_name": refused, "good_lost": len(NOT_JSON) - served,
            "exception": exc}


def keys() -> dict:
    from test_store import BAD_UPDATES, svc

    kept = raised = 0
    for spoil, _ in BAD_UPDATES:
        store = ServiceStore(NodeConfig(node_name="node-a"), log_invalid=False)
        good = svc()
        store.replace("Service", [good])
        before = store.state_for(("ns", "svc"))
        bad = copy.deepcopy(good)
        bad["spec"]["clusterIP"] = "172.30.0.9"
        spoil(bad)
        try:
            store.replace("Service", [bad])
        except Exception:  # noqa: BLE001
            raised += 1
            continue
        kept += store.state_for(("ns", "svc")) == before
    return {"attempted": len(BAD_UPDATES), "last_good_served": kept, "raised": raised,
            "lost": len(BAD_UPDATES) - kept}


def bomb() -> dict:
    from test_inputs import laughs, service

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
    d = Path(tempfile.mkdtemp())
    (d / "a.yaml").write_text(laughs(9))
    (d / "b.yaml").write_text(service("good", 2))
    t0 = time.process_time()
    store, exc = _read_into_store(d)
    return {"file_bytes": len(laughs(9)), "attempted": 2, "good_served": len(store.service_keys()),
            "cpu_seconds": round(time.process_time() - t0, 3),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "exception": exc}


if __name__ == "__main__":
    import pyagent

    print(f"pyagent from {Path(pyagent.__file__).parent}")
    for probe in (nonjson, keys, bomb):  # bomb last: it lowers this process's limits
        print(f"{probe.__name__:8} {json.dumps(probe())}")
