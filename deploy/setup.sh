#!/usr/bin/env bash
# One-time (idempotent) setup for a Debian/Ubuntu machine, run as root:
# Debian packages (BCC, clang, bpftool, iproute2, iptables, nftables, conntrack),
# kernel headers for BCC, and a venv at .venv that can `import bcc`.
# A second run only verifies and exits in about a second.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
stamp="$venv/.pyagent-setup"

log() { printf '[setup] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root (BPF, namespaces and apt need it)"; exit 1; }

packages=(python3-bpfcc bpfcc-tools libbpfcc-dev libbpf-dev clang llvm bpftool
          iproute2 iptables nftables conntrack python3-venv python3-dev
          libffi-dev gcc make kmod)

missing_packages() {
    local p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    log "installing: $(echo $missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# BCC compiles against /lib/modules/$(uname -r)/build. Prefer the running
# kernel's own headers; otherwise link the distribution's generic headers
# (good enough for the UAPI and helper definitions BCC needs).
# The newest generic headers tree under /usr/src, or nothing. A glob, not
# `ls | sort`: with `pipefail` a pattern that matches nothing must not abort.
newest_generic_headers() {
    local d best=
    for d in /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-arm64 \
             /usr/src/linux-headers-*-generic; do
        [ -d "$d/include" ] || continue
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n1)" = "$d" ]; then
            best=$d
        fi
    done
    printf '%s' "$best"
}

# BCC compiles against /lib/modules/$(uname -r)/build. Prefer the running
# kernel's own headers; otherwise link the distribution's generic headers
# (good enough for the UAPI and helper definitions BCC needs).
resolve_headers() {
    local rel mod
    rel=$(uname -r)
    mod="/lib/modules/$rel"
    [ -e "$mod/build/include" ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -qq --no-install-recommends "linux-headers-$rel" >/dev/null 2>&1; then
        [ -e "$mod/build/include" ] && return 0
    fi
    local generic
    generic=$(newest_generic_headers)
    if [ -z "$generic" ]; then
        local arch meta
        arch=$(dpkg --print-architecture)
        # Debian names the meta package by architecture, Ubuntu "generic".
        if grep -qi ubuntu /etc/os-release 2>/dev/null; then meta=linux-headers-generic
        else meta="linux-headers-$arch"; fi
        log "no headers for $rel; installing the distribution's generic headers ($meta)"
        apt-get install -y -qq --no-install-recommends "$meta" >/dev/null
        generic=$(newest_generic_headers)
        [ -n "$generic" ] || { log "installed $meta but found no headers under /usr/src"; exit 1; }
    fi
    # Debian's flavour tree points into ...-common, Ubuntu's into the tree
    # without the flavour suffix.
    local common="${generic%-*}-common"
    [ -d "$common" ] || common="${generic%-*}"
    [ -d "$common" ] || common="$generic"
    log "linking $generic as the headers of $rel"
    mkdir -p "$mod"
    ln -sfn "$generic" "$mod/build"
    ln -sfn "$common" "$mod/source"
}

make_venv() {
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import bcc' 2>/dev/null; then
        rm -rf "$venv"
        log "creating $venv (system site packages, for Debian's bcc)"
        /usr/bin/python3 -m venv --system-site-packages "$venv"
    fi
    local want
    want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing pyagent and its Python dependencies"
        "$venv/bin/pip" install -q --upgrade pip >/dev/null
        "$venv/bin/pip" install -q -e "$here[test]"
        echo "$want" >"$stamp"
    fi
}

# promtool (the tests check deploy/observability with it), unpacked from
# Debian's prometheus package into the venv: installing the package would
# also enable a Prometheus server on the machine.
install_promtool() {
    [ -x "$venv/bin/promtool" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # apt downloads as _apt
    log "fetching promtool (from Debian's prometheus package, into $venv/bin)"
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) \
        || { apt-get update -qq && (cd "$tmp" && apt-get download -qq prometheus); } || true
    # Only the observability tests need it: the demo and the agent go on without.
    if ls "$tmp"/prometheus_*.deb >/dev/null 2>&1 && dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"; then
        install -m 0755 "$tmp/root/usr/bin/promtool" "$venv/bin/promtool"
    else
        log "warning: could not fetch promtool; tests/unit/test_observability.py will fail"
    fi
    rm -rf "$tmp"
}

install_packages
resolve_headers
make_venv
install_promtool
"$venv/bin/python" -c 'import bcc, pyroute2, cffi, kubernetes, prometheus_client, yaml' \
    || { log "venv is incomplete"; exit 1; }
log "ready: $venv"
