#!/usr/bin/env bash
# Vagrant provisioner (runs as root in the guest): install pyagent exactly
# as the README does, with deploy/setup.sh, in the rsynced checkout.
set -euo pipefail
cd /pyagent
expect=${PYAGENT_EXPECT_KERNEL:-}
release=$(uname -r)
if [ -n "$expect" ] && [[ "$release" != "$expect".* ]]; then
    echo "[provision] note: kernel $release, this machine is meant for $expect.x" >&2
fi
./deploy/setup.sh
echo "[provision] ready on $release"
