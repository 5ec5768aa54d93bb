#!/usr/bin/env bash
# NØMADE's test command: installs what the tests need (Debian packages, Python packages), brings
# up the real single-host Slurm cluster, and runs the whole test suite.  Run as root:  ./test.sh
set -euo pipefail
cd "$(dirname "$0")"
slurm-conf/install-deps.sh
python3 -m pip install --quiet --disable-pip-version-check -e ".[aggregator,train,dev]"
# What the tests that run as other users (slurm, alice, bob) start: /usr/local/bin/nomadectl etc.
slurm-conf/install-nomade.sh
slurm-conf/cluster-up.sh
# The cluster, nvidia-ml-py and torch are all provided above: under this command their absence is
# a failure, not a skip (conftest.required).
NOMADE_TEST_COMMAND=1 exec python3 -m pytest -q -p no:cacheprovider "$@"
