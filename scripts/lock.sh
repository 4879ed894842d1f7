#!/usr/bin/env bash
# Refresh constraints.txt: the exact versions of every package the test suite was last green with.
#
#   scripts/lock.sh            # fresh venv, newest versions pyproject allows, the default test suite, then the lock
#   scripts/lock.sh --no-test  # the lock without running the suite first (to see what changed, not to commit)
#
# The lock is written only when the suite passes, so constraints.txt always names a green set. It holds
# every distribution of `pip install torch==2.13.0 && pip install -e ".[train,export,dev,hpc]"` on this
# platform (Linux x86_64, the Python that runs this script), local version labels (+cpu) stripped so that
# the CUDA and CPU builds of one torch release both satisfy it. .ci/run installs with `-c constraints.txt`.
set -euo pipefail
cd "$(dirname "$0")/.."
run_tests=1
if [[ "${1:-}" == "--no-test" ]]; then run_tests=0; elif [[ -n "${1:-}" ]]; then
    echo "Error: unknown option ${1}; expected --no-test or nothing" >&2; exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet torch==2.13.0
"$py" -m pip install --quiet -e ".[train,export,dev,hpc]"
if (( run_tests )); then
    "$py" -m pytest -q -p no:cacheprovider
fi
{
    echo "# Versions the test suite is green with: pip install -c constraints.txt ..."
    echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$py" -c 'import sys; print("Python", sys.version.split()[0])') on $(uname -m) Linux."
    echo "# Refresh: scripts/lock.sh (docs/install.md, 'Reproducible installs'). Do not edit by hand."
    "$py" -m pip freeze --exclude-editable | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*$/\1/' | LC_ALL=C sort -f
} > "$work/constraints.txt"
mv "$work/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -cv '^#' constraints.txt) pinned distributions"
