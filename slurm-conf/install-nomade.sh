#!/usr/bin/env bash
# Install NØMADE the way a site does: a virtual environment on the system's Python under
# /opt/nomade/venv (readable by every user), with nomadectl, nomade-agent and nomade-aggregator
# linked into /usr/local/bin, so that a user on a login node runs `nomadectl check` from a shell.
#   slurm-conf/install-nomade.sh [EXTRAS]     EXTRAS: aggregator (default; the head node),
#       aggregator,train (a head node that trains: torch==2.13.0, onnx, skl2onnx) or ""
# Run as root; rerun after a change to the source: NØMADE itself is always reinstalled.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=${NOMADE_PREFIX:-/opt/nomade}
extras=${1-aggregator}
venv=$prefix/venv
say() { printf 'install-nomade: %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || { echo "install-nomade: ERROR: run as root" >&2; exit 1; }
umask 022
[[ -x $venv/bin/python ]] || { say "creating $venv on $(/usr/bin/python3 --version)"; /usr/bin/python3 -m venv "$venv"; }
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# Built from a copy, so that the source tree gets no build/ folder and any checkout path works.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$src" --exclude=.git --exclude=build --exclude='*.egg-info' --exclude=data -cf - . | tar -C "$build" -xf -
"${pip[@]}" "$build${extras:+[$extras]}"
"${pip[@]}" --no-deps --force-reinstall "$build"
for cmd in nomadectl nomade-agent nomade-aggregator; do
    ln -sfn "$venv/bin/$cmd" "/usr/local/bin/$cmd"
done
chmod -R a+rX "$prefix"
say "NØMADE installed in $venv; nomadectl, nomade-agent and nomade-aggregator in /usr/local/bin"
