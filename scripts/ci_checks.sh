#!/usr/bin/env bash
# The checks CI runs after the default test suite (.ci/run); contributors run them the same way:
#
#   scripts/ci_checks.sh                # everything, in this order
#   scripts/ci_checks.sh style          # ruff format --check, ruff check, mypy (a minute or two)
#   scripts/ci_checks.sh slow           # the slow tests: pytest -m slow (under 50 minutes on 2 shared cores)
#   scripts/ci_checks.sh install        # the inference-only install in a fresh virtual environment
#
# Needs the development install (the README's second command: ruff and mypy come with the `dev` extra).
# `install` needs network access to the package index, as `pip install .` does for a user.
# Each step prints its wall time; the first failing step stops the script with its exit status.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=("$@")
if (( ${#steps[@]} == 0 )); then steps=(style slow install); fi
for s in "${steps[@]}"; do
    case "$s" in
        style | slow | install) ;;
        *) echo "Error: unknown step '$s'; expected style, slow or install (or nothing for all)" >&2; exit 2 ;;
    esac
done

scratch=""  # the inference-only install's temporary folder, removed on exit however the script ends
trap 'if [[ -n "$scratch" ]]; then rm -rf "$scratch"; fi' EXIT

timed() {  # timed NAME COMMAND...: run the command, then print how long it took
    local name=$1 t0=$SECONDS
    shift
    echo "== $name"
    "$@"
    echo "== $name: passed in $((SECONDS - t0)) s"
}

style() {
    timed "ruff format --check" python -m ruff format --check .
    timed "ruff check" python -m ruff check .
    timed "mypy" python -m mypy
}

slow() {
    timed "pytest -m slow" python -m pytest -m slow -q -p no:cacheprovider --durations=10
}

inference_install() {
    # What a user gets from `pip install .`: a fresh environment, the versions CI pins, then the README's first
    # command exactly as written, run in a copy of the working tree (its outputs never land in this checkout).
    scratch=$(mktemp -d)
    local work=$scratch
    mkdir -p "$work/src"
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [[ -e "$f" ]] && echo "$f"
    done | tar -cf - -T - | tar -xf - -C "$work/src"
    local first
    first=$(awk '/^```bash/ { inside = 1; next } /^```/ { if (inside) exit } inside' README.md)
    if [[ "$first" != *"cropmap classify"* ]]; then
        echo "Error: README.md's first bash block is '$first'; expected the 'cropmap classify' set-up command" >&2
        return 1
    fi
    python -m venv "$work/venv"
    (
        cd "$work/src"
        unset PYTHONPATH PYTHONHOME
        export VIRTUAL_ENV="$work/venv" PATH="$work/venv/bin:$PATH"
        python -m pip install --quiet . -c constraints.txt
        echo "README.md, first command: $first"
        bash -euo pipefail -c "$first"
        for f in out/belgium_2021_crops.tif out/belgium_2021_crops_quicklook.png; do
            [[ -s "$f" ]] || { echo "Error: the README's first command left no $f; expected the map and its quick-look" >&2; exit 1; }
        done
        # The inference install never pulls the training or export stack (pyproject.toml: dependencies).
        python - <<'EOF'
import importlib.util
import sys

present = [name for name in ("torch", "onnx", "optuna") if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"Error: the inference-only install has {', '.join(present)}; expected none of torch, onnx, optuna")
print("inference-only install: torch, onnx and optuna absent")
EOF
    )
}

for s in "${steps[@]}"; do
    case "$s" in
        style) style ;;
        slow) slow ;;
        install) timed "inference-only install (fresh venv, README's first command)" inference_install ;;
    esac
done
echo "ci_checks: ${steps[*]}: all passed"
