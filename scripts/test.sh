#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite. Extra arguments go to pytest,
# e.g. `scripts/test.sh tests/unit -x` or `scripts/test.sh -m slow`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$TTRL_PYTHON" -m pytest "$@"
