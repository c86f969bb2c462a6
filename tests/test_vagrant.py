"""Kernel VMs: the Vagrantfile, the qemu runner and the verifier baseline.

- `vagrant validate` runs where vagrant is installed, and is skipped
  elsewhere: no test installs packages (deploy/setup.sh never installs
  vagrant either; CI provisions it: `apt-get install vagrant vagrant-libvirt`).
- The qemu runner boots a Debian kernel only with PYAGENT_QEMU=1 (marker
  `vm`, not `root`: skipping it is fine under PYAGENT_REQUIRE_KERNEL=1).
- The verifier check loads every BPF program on the running kernel.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VAGRANT_DIR = REPO / "vagrant"


def load_script(name: str):
    """vagrant/<name> (a Python script without .py) as a module."""
    path = str(VAGRANT_DIR / name)
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = mod  # dataclasses look their module up there
    loader.exec_module(mod)
    return mod


qemu_run = load_script("qemu-run")
verifier = load_script("verifier-baseline")


# ---------------------------------------------------------------------------
# vagrant


def _vagrant() -> str:
    exe = shutil.which("vagrant")
    if exe:
        return exe
    pytest.skip("vagrant is not installed (Debian: apt-get install vagrant vagrant-libvirt; "
                "deploy/setup.sh does not install it)")


def test_vagrantfile_validates(tmp_path):
    exe = _vagrant()
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    plugins = subprocess.run([exe, "plugin", "list"], cwd=VAGRANT_DIR, env=env,
                             capture_output=True, text=True, timeout=120).stdout
    if "vagrant-libvirt" in plugins:  # validate the libvirt provider blocks too
        cmd, env["VAGRANT_DEFAULT_PROVIDER"] = [exe, "validate"], "libvirt"
    else:
        cmd = [exe, "validate", "--ignore-provider"]
    res = subprocess.run(cmd, cwd=VAGRANT_DIR, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout
    for machine in ("debian12", "ubuntu2204", "ubuntu2404"):
        assert machine in (VAGRANT_DIR / "Vagrantfile").read_text()


def test_vagrantfile_errors_are_caught(tmp_path):
    """The validation above means something: a typo fails it."""
    exe = _vagrant()
    broken = tmp_path / "vagrant"
    broken.mkdir()
    text = (VAGRANT_DIR / "Vagrantfile").read_text().replace("m.vm.hostname", "m.vm.hostnam")
    (broken / "Vagrantfile").write_text(text)
    shutil.copy(VAGRANT_DIR / "provision.sh", broken)
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    res = subprocess.run([exe, "validate", "--ignore-provider"], cwd=broken, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "hostnam" in res.stdout + res.stderr


# ---------------------------------------------------------------------------
# qemu runner: pure parts


def _parse_newc(data: bytes) -> dict[str, tuple[int, bytes, int]]:
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body, os.makedev(rmaj, rmin))


def test_cpio_newc_round_trip():
    entries = [("bin", stat.S_IFDIR | 0o755, b"", 0),
               ("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)),
               ("init", 0o100755, b"#!/bin/sh\necho hi\n", 0)]
    parsed = _parse_newc(qemu_run.cpio_newc(entries))
    assert parsed == {n: (m, d, r) for n, m, d, r in entries}


def test_module_closure_orders_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko\n"
        "kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko.xz\n"
        "kernel/drivers/virtio/virtio_ring.ko.xz:\n")
    order = [p.name for p in qemu_run.module_closure(tmp_path, ["9pnet_virtio", "9p", "absent"])]
    assert order == ["9pnet.ko", "virtio_ring.ko.xz", "virtio.ko", "9pnet_virtio.ko",
                     "netfs.ko", "fscache.ko", "9p.ko"]


def test_junit_counts(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1">'
                   "</testsuite></testsuites>")
    assert qemu_run.junit_counts(xml) == {"tests": 5, "failures": 1, "errors": 1,
                                          "skipped": 1, "passed": 2}
    assert qemu_run.junit_counts(tmp_path / "missing.xml") == {}


def test_private_apt_configuration_lives_in_the_cache(tmp_path, monkeypatch):
    """Kernels come through apt with a configuration of the runner's own:
    sources, lists, cache and dpkg status under the cache, not the system's."""
    monkeypatch.setattr(qemu_run, "CACHE", tmp_path)
    env = qemu_run.apt_env()
    conf_path = tmp_path / "apt" / "apt.conf"
    assert env["APT_CONFIG"] == str(conf_path)
    conf = dict(line.rstrip(";").split(" ", 1) for line in conf_path.read_text().splitlines())
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::Etc::Preferences",
                "Dir::Etc::PreferencesParts", "Dir::State", "Dir::State::Lists",
                "Dir::State::status", "Dir::Cache"):
        assert conf[key].strip('"').startswith(str(tmp_path / "apt")), key
    sources = (tmp_path / "apt" / "etc" / "sources.list").read_text()
    for suite in ("bookworm", "bookworm-backports", "bookworm-security", "bullseye"):
        assert f" {suite} main\n" in sources
    assert (tmp_path / "apt" / "lists" / "partial").is_dir()


def test_kernel_series_resolve_to_the_newest_image_and_are_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu_run, "CACHE", tmp_path)
    offered = ["linux-image-6.12.95+deb12-amd64", "linux-image-6.1.0-57-amd64",
               "linux-image-6.1.0-50-amd64", "linux-image-5.10.0-32-amd64"]
    monkeypatch.setattr(qemu_run, "meta_images", lambda meta="linux-image-amd64": offered)
    assert qemu_run.resolve_image_package("6.1") == "linux-image-6.1.0-57-amd64"
    assert qemu_run.resolve_image_package("6.12") == "linux-image-6.12.95+deb12-amd64"
    assert qemu_run.resolve_image_package("5.10") == "linux-image-5.10.0-32-amd64"
    assert qemu_run.resolve_image_package("linux-image-5.10.0-32-amd64") == (
        "linux-image-5.10.0-32-amd64")
    offered.clear()  # offline, or the archive moved on: the cache keeps the answer
    assert qemu_run.resolve_image_package("6.12") == "linux-image-6.12.95+deb12-amd64"
    with pytest.raises(SystemExit, match="cannot resolve"):
        qemu_run.resolve_image_package("4.19")


def test_concurrent_runners_get_their_own_results_dirs(tmp_path):
    dirs = {qemu_run.new_results_dir(tmp_path / "runs", "5.10.0-32-amd64") for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() and d.name.startswith("5.10.0-32-amd64-")
                                  for d in dirs)


def test_qemu_run_help_needs_no_root():
    res = subprocess.run([str(VAGRANT_DIR / "qemu-run"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "--kernel" in res.stdout


@pytest.mark.vm
@pytest.mark.slow
def test_qemu_runner_passes_the_socket_lb_suite_in_a_distribution_kernel():
    """Boots Debian's kernel under qemu (TCG, about 2.5 min) and runs the
    socket LB tests there. PYAGENT_QEMU_KERNEL / PYAGENT_QEMU_TESTS override
    the kernel package and the pytest arguments."""
    if os.environ.get("PYAGENT_QEMU") != "1":
        pytest.skip("boots a qemu VM (minutes under TCG): set PYAGENT_QEMU=1 to run it")
    if os.geteuid() != 0:
        pytest.skip("the qemu runner needs root")
    kernel = os.environ.get("PYAGENT_QEMU_KERNEL", "linux-image-amd64")
    tests = os.environ.get("PYAGENT_QEMU_TESTS", "-m root tests/test_sock_lb.py").split()
    res = subprocess.run([str(VAGRANT_DIR / "qemu-run"), "--kernel", kernel, "--", *tests],
                         capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "PASS" in res.stdout and "0 failed" in res.stdout


@pytest.mark.vm
def test_qemu_runner_boots_a_kernel_cached_below_tmp(tmp_path):
    """The VM's /tmp and /run are fresh tmpfs: a PYAGENT_VM_CACHE below them
    (here a hard-linked copy of an already extracted kernel) still reaches
    the VM, through a share of its own."""
    if os.environ.get("PYAGENT_QEMU") != "1":
        pytest.skip("boots a qemu VM: set PYAGENT_QEMU=1 to run it")
    if os.geteuid() != 0:
        pytest.skip("the qemu runner needs root")
    kernels = VAGRANT_DIR / ".cache" / "kernels"
    ready = sorted(p.parent for p in kernels.glob("*/.ready"))
    if not ready:
        pytest.skip("no extracted kernel in vagrant/.cache yet")
    cache = tmp_path / "cache"
    (cache / "kernels").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(ready[0]), str(cache / "kernels")], check=True)
    package = (ready[0] / ".ready").read_text().strip()
    res = subprocess.run([str(VAGRANT_DIR / "qemu-run"), "--kernel", package, "--exec",
                          "test -e /lib/modules/$(uname -r)/build/Makefile && uname -r"],
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYAGENT_VM_CACHE=str(cache)))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "PASS" in res.stdout


# ---------------------------------------------------------------------------
# verifier baseline


def test_compare_reports_growth_beyond_the_margin_and_load_failures():
    base = {"a/x": {"loaded": True, "verified_insns": 100, "xlated_insns": 50},
            "a/y": {"loaded": True, "verified_insns": 100, "xlated_insns": 50}}
    now = {"a/x": {"loaded": True, "verified_insns": 110, "xlated_insns": 55},  # exactly +10%
           "a/y": {"loaded": True, "verified_insns": 111, "xlated_insns": 50},
           "a/z": {"loaded": False, "error": "R1 invalid mem access"},
           "a/new": {"loaded": True, "verified_insns": 7}}
    problems = verifier.compare(base, now, 0.10)
    assert len(problems) == 2
    assert problems[0].startswith("a/y: verified_insns grew 100 -> 111")
    assert problems[1].startswith("a/z: does not load")


def test_committed_baseline_covers_every_program_on_four_kernel_series():
    data = json.loads((VAGRANT_DIR / "verifier-baseline.json").read_text())
    kernels = data["kernels"]
    assert {"5.10", "6.1", "6.12", "6.18"} <= set(kernels)
    for release, ent in kernels.items():
        assert verifier.series(ent["release"]) == release
        assert ent["programs"], release
        for key, prog in ent["programs"].items():
            assert prog["loaded"], (release, key)
            assert prog["verified_insns"] > 0, (release, key)


@pytest.mark.root
def test_every_program_loads_on_this_kernel_within_the_baseline():
    """Loads each BPF program found under pyagent/dataplanes (nothing is
    attached). A failed load fails; growth beyond 10% only warns, since a
    larger program may be intended: record it with
    `vagrant/verifier-baseline --update`."""
    programs = verifier.measure()
    assert programs, "no BPF programs discovered"
    failed = {k: p.get("error") for k, p in programs.items() if not p["loaded"]}
    assert not failed, failed
    data = verifier.read_baseline(VAGRANT_DIR / "verifier-baseline.json")
    base = data["kernels"].get(verifier.series(os.uname().release), {}).get("programs", {})
    for line in verifier.compare(base, programs, verifier.MARGIN):
        warnings.warn(f"verifier baseline: {line}", stacklevel=1)


def test_baseline_is_keyed_by_kernel_series(tmp_path):
    """Another build of a series is compared with that series' entry; an
    old file keyed by release is read under its series."""
    assert verifier.series("6.1.0-57-amd64") == "6.1"
    assert verifier.series("6.12.95+deb12-amd64") == "6.12"
    assert verifier.series("6.18.44-fc-v1045") == "6.18"
    old = tmp_path / "baseline.json"
    old.write_text(json.dumps({"comment": "", "kernels": {
        "6.18.44-fc-v669": {"programs": {"a/x": {"loaded": True, "verified_insns": 5}}}}}))
    data = verifier.read_baseline(old)
    assert data["kernels"]["6.18"]["release"] == "6.18.44-fc-v669"
    assert data["kernels"]["6.18"]["programs"]["a/x"]["verified_insns"] == 5


# ---------------------------------------------------------------------------
# run-all, against fake vagrant and ssh commands

FAKE_VAGRANT = """#!/bin/sh
echo "vagrant $*" >>"$FAKE_LOG"
case "$1" in
    ssh-config) echo "Host $2" ;;
esac
"""

FAKE_SSH = """#!/usr/bin/env python3
import json, os, shlex, subprocess, sys, tempfile
machine, cmd = sys.argv[3], sys.argv[4]
argv = shlex.split(cmd)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([machine, argv]) + "\\n")
if "tar" in argv:
    with tempfile.TemporaryDirectory() as d:
        rc = "1" if machine == "ubuntu2204" else "0"
        files = {"release": f"fake-{machine}\\n", "rc": rc + "\\n",
                 "output.log": "== 3 passed in 1s ==\\n",
                 "verifier.json": json.dumps({"release": f"fake-{machine}", "entry": {
                     "programs": {"sock_lb/lb4_connect": {"loaded": True,
                                                          "verified_insns": 9}}}})}
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        sys.stdout.flush()
        subprocess.run(["tar", "-C", d, "-cf", "-", "."], check=True)
"""


def test_run_all_collects_every_machine_and_fails_if_one_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("vagrant", FAKE_VAGRANT), ("ssh", FAKE_SSH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log),
               PYAGENT_VAGRANT_RESULTS=str(tmp_path / "results"))
    res = subprocess.run([str(VAGRANT_DIR / "run-all"), "debian12", "ubuntu2204", "--",
                          "-k", "a b", "tests/test_sock_lb.py"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert any(ln.startswith("debian12") and "fake-debian12" in ln and "PASS" in ln
               for ln in lines), res.stdout
    assert any(ln.startswith("ubuntu2204") and "FAIL(1)" in ln for ln in lines), res.stdout
    assert "kernel fake-ubuntu2204" in res.stdout  # the verifier measurements were read
    calls = log.read_text().splitlines()
    assert "vagrant up debian12 --provision" in calls
    assert "vagrant halt ubuntu2204" in calls
    guest = [json.loads(c)[1] for c in calls if c.startswith("[")]
    tests = [argv for argv in guest if "/pyagent/vagrant/guest-test" in argv]
    assert len(tests) == 2
    assert tests[0][-4:] == ["--", "-k", "a b", "tests/test_sock_lb.py"]
    collected = sorted(p.parent.name for p in (tmp_path / "results").glob("*/*/rc"))
    assert collected == ["debian12", "ubuntu2204"]
