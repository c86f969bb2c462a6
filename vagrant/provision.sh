#!/usr/bin/env bash
# Vagrant provisioner (runs as root in the guest): install pyagent exactly
# as the README does, with deploy/setup.sh, in the rsynced checkout.
set -euo pipefail
cd /pyagent
log() { printf '[provision] %s\n' "$*" >&2; }
expect=${PYAGENT_EXPECT_KERNEL:-}
release=$(uname -r)
if [ -n "$expect" ] && [[ "$release" != "$expect".* ]]; then
    log "note: kernel $release, this machine is meant for $expect.x"
fi
# Known limits of older distributions, said up front rather than as a pip error.
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "WARNING: python3 is $(python3 -V 2>&1 | cut -d' ' -f2); pyproject.toml requires >= 3.11"
fi
./deploy/setup.sh
[ -e /usr/lib/x86_64-linux-gnu/libbpf.so.1 ] || ls /usr/lib/*/libbpf.so.1 >/dev/null 2>&1 \
    || log "WARNING: no libbpf.so.1 (ebpf/libbpf.py binds libbpf 1.x)"
log "ready on $release"
