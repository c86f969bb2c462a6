"""deploy/setup.sh as a machine that has never run it sees it: no kernel
headers anywhere. A private mount namespace hides /usr/src and the running
kernel's /lib/modules entry; `apt-get` is a stand-in that knows only the
distribution's generic headers package (as on a custom or cloud kernel, where
`linux-headers-$(uname -r)` does not exist) and unpacks a headers tree the way
Debian's does (flavour tree plus -common tree). The first run must succeed and
link that tree; the second must be a no-op.

deploy/fresh-check (run by .ci/run) repeats this for real in a debootstrap chroot.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, REPO

pytestmark = [pytest.mark.root]

APT_STUB = """#!/bin/sh
# Stand-in for apt-get: only the generic headers meta package "exists".
echo "apt-get $*" >> "{log}"
for a in "$@"; do
  case "$a" in
    linux-headers-amd64|linux-headers-generic)
      mkdir -p /usr/src/linux-headers-9.9.9-1-amd64/include \\
               /usr/src/linux-headers-9.9.9-1-common/include
      exit 0;;
    linux-headers-*) echo "E: Unable to locate package $a" >&2; exit 100;;
  esac
done
exit 0
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs root (mount namespace)")
def test_first_run_without_any_headers_succeeds_and_links_generic(tmp_path: Path) -> None:
    rel = os.uname().release
    log = tmp_path / "apt.log"
    stub = tmp_path / "apt-get"
    stub.write_text(APT_STUB.format(log=log))
    stub.chmod(0o755)
    setup = f"PATH={tmp_path}:$PATH bash deploy/setup.sh"
    script = (f"mount --make-rprivate / && mount -t tmpfs none /usr/src && "
              f"mkdir -p /lib/modules/{rel} && mount -t tmpfs none /lib/modules/{rel} && "
              f"{setup} && echo first-ok && {setup} && echo second-ok && "
              f"readlink /lib/modules/{rel}/build /lib/modules/{rel}/source")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, text=True,
                         capture_output=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[:2] == ["first-ok", "second-ok"], out.stdout
    assert "installing the distribution's generic headers" in out.stderr
    assert out.stdout.splitlines()[2:] == ["/usr/src/linux-headers-9.9.9-1-amd64",
                                           "/usr/src/linux-headers-9.9.9-1-common"]
    # The second run found the link and asked apt for nothing more.
    assert log.read_text().count("linux-headers-amd64") == 1
