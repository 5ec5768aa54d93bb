#!/usr/bin/env bash
# Install what the NØMADE development cluster needs on Debian 12, as root.
# Idempotent: when every package is already installed it returns at once.
# A policy-rc.d that exits 101 keeps apt from starting the daemons; cluster-up.sh
# starts them by hand (the dev and CI hosts have no systemd as PID 1).
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server sysstat shellcheck procps strace curl python3-venv)
POLICY=/usr/sbin/policy-rc.d

say() { printf 'install-deps: %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || {
    echo "install-deps: ERROR: run as root" >&2
    exit 1
}

if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\n# Written by NØMADE slurm-conf/install-deps.sh: apt must not start daemons.\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    say "wrote $POLICY (apt will not start daemons)"
fi

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    say "all packages already installed: ${PACKAGES[*]}"
    exit 0
fi

say "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"
say "done"
