"""Pure helpers of the five-mode report (tests/bench/report*.py): wrk output
parsing, percentiles, the full-sync budget and the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.report_budget import estimate, limits, skip_reason
from tests.bench.report_cost import percentile
from tests.bench.report_table import table
from tests.bench.report_wrk import nginx_conf, parse

WRK = """Running 2s test @ http://10.95.0.11:80/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    52.10us   40.00us   3.21ms   97.50%
    Req/Sec    75.12k     2.10k   80.00k    70.00%
  Latency Distribution
     50%   45.00us
     75%   51.00us
     90%   60.00us
     99%    1.25ms
  150240 requests in 2.00s, 21.49MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  75110.42
Transfer/sec:     10.74MB
"""


def test_wrk_latency_distribution_in_microseconds() -> None:
    r = parse(WRK)
    assert r["p50_us"] == 45.0 and r["p75_us"] == 51.0 and r["p90_us"] == 60.0
    assert r["p99_us"] == pytest.approx(1250.0)
    assert r["rps"] == pytest.approx(75110.42) and r["requests"] == 150240
    assert r["errors"] == 2 + 1 + 4


def test_wrk_seconds_and_no_errors() -> None:
    text = WRK.replace("1.25ms", "1.50s").split("  Socket errors")[0]
    r = parse(text)
    assert r["p99_us"] == pytest.approx(1.5e6) and r["errors"] == 0


def test_wrk_output_without_a_distribution_is_an_error() -> None:
    with pytest.raises(ValueError, match="no latency distribution"):
        parse("unable to connect to 10.95.0.11:80 Connection refused\n")


def test_nginx_config_keeps_every_path_in_its_directory() -> None:
    conf = nginx_conf(Path("/tmp/lab/nginx"), "10.244.0.10:8081")
    assert "listen 10.244.0.10:8081;" in conf and "master_process off;" in conf
    paths = [w.rstrip(";") for w in conf.split() if w.startswith("/") and w != "/"]
    assert paths and all(p.startswith("/tmp/lab/nginx/") for p in paths)


def test_percentile_interpolates_between_ranks() -> None:
    xs = list(range(1, 51))  # 1..50
    assert percentile(xs, 50) == pytest.approx(25.5)
    assert percentile(xs, 99) == pytest.approx(49.51)
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_estimate_uses_the_measured_growth_never_below_linear() -> None:
    assert estimate([], 1000) is None
    t, k = estimate([(1000, 0.42), (10000, 31.9)], 50000)  # type: ignore[misc]
    assert k == pytest.approx(1.88, abs=0.01) and t == pytest.approx(660, rel=0.02)
    t, k = estimate([(10, 0.02), (1000, 0.5)], 10000)  # type: ignore[misc]
    assert k == 1.0 and t == pytest.approx(5.0)
    t, k = estimate([(1000, 2.0)], 4000)  # type: ignore[misc]
    assert (t, k) == (8.0, 1.0)


def test_skip_reason_budget_and_listening_sockets() -> None:
    machine = {"fds": 20000, "ports": 28232}
    why = skip_reason("iptables", 50000, 50002, [(1000, 0.42), (10000, 31.9)], 120, machine)
    assert why and "estimated at 658 s" in why and "budget 120 s" in why
    assert skip_reason("nftables", 50000, 50002, [(1000, 0.5), (10000, 3.6)], 120,
                       machine) is None
    why = skip_reason("userspace", 50000, 50002, [(10000, 6.9)], 120, machine)
    assert why and "50,002 listening sockets" in why and "19,500" in why
    assert skip_reason("userspace", 10000, 10002, [], 120, machine) is None


def test_limits_from_the_port_range() -> None:
    assert limits("32768\t60999\n")["ports"] == 28232


def test_table_rows_skipped_errors_and_missing_values() -> None:
    out = table([
        {"mode": "ebpf", "services": 10, "direct_us": 120.0, "vip_us": 125.0, "ratio": 0.96,
         "wrk_unavailable": "wrk not installed (apt-get install -y wrk nginx-light)"},
        {"mode": "ipvs", "services": 10, "error": "RuntimeError: no IPVS"},
        {"mode": "iptables", "services": 50000, "skipped": "too slow"},
    ]).splitlines()
    assert out[0].split()[:4] == ["mode", "services", "direct", "us"]
    assert out[1].split()[:4] == ["ebpf", "10", "120.0", "125.0"] and out[1].split()[-1] == "-"
    assert out[2].endswith("RuntimeError: no IPVS")
    assert out[3].endswith("skipped: too slow")
    assert "wrk: wrk not installed (apt-get install -y wrk nginx-light)" in out


def test_missing_tools_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.bench import report_wrk

    monkeypatch.setattr(report_wrk.shutil, "which", lambda tool: None)
    assert report_wrk.missing() == ("wrk and nginx not installed "
                                    "(apt-get install -y wrk nginx-light)")
    monkeypatch.setattr(report_wrk.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert report_wrk.missing() is None
