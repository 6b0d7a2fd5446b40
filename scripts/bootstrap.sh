#!/usr/bin/env bash
# Set up the project's virtualenv on a fresh Debian machine (run as root, registries only).
# Idempotent: safe to run again; `make` calls it when pyproject.toml changes.
set -euo pipefail
venv="${1:-.venv}"

have_python() {
    command -v python3 >/dev/null 2>&1 &&
        python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

if ! have_python; then
    echo "bootstrap: installing Python 3.11+ with venv from Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
if ! have_python; then
    echo "bootstrap: need Python >= 3.11 with the venv module; found: $(python3 --version 2>&1)" >&2
    exit 1
fi

# Debian packages the integration tests run for real: mosquitto (MQTT agents and events),
# systemd (systemd-analyze verify/security on the unit, sysusers/tmpfiles), chromium (the
# status page rendered headless), etcd-server (the HA store's 3-member test cluster),
# etcd-client (etcdctl, to inspect it), prometheus (promtool checks; a real server scraping
# the sandbox), libfaketime (the chaos suite steps the wall clock under a running daemon),
# e2fsprogs (the chaos suite's small ext4 disks that turn read-only).
missing=()
for pkg_bin in mosquitto:/usr/sbin/mosquitto systemd:/usr/bin/systemd-analyze \
    chromium:/usr/bin/chromium etcd-server:/usr/bin/etcd etcd-client:/usr/bin/etcdctl \
    prometheus:/usr/bin/promtool libfaketime:/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 \
    e2fsprogs:/usr/sbin/mkfs.ext4; do
    pkg="${pkg_bin%%:*}"; bin="${pkg_bin#*:}"
    [ -e "$bin" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing ${missing[*]} from Debian packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bootstrap: not root; tests needing ${missing[*]} will be skipped (outside CI)" >&2
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "bootstrap: $("$venv/bin/failoverd" --version) ready in $venv" >&2
