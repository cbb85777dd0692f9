#!/usr/bin/env sh
# Bootstrap and run: `./dev.sh pipeline` runs the whole pipeline, `./dev.sh test` the tests.
# Needs only python3 (3.11+); installs uv into .tools/ when it is not on PATH, then uv
# installs the locked environment (.venv) from uv.lock.
set -eu
cd "$(dirname "$0")"
if [ -n "${UV:-}" ]; then :
elif command -v uv >/dev/null 2>&1; then UV=uv
else
  if [ ! -x .tools/bin/uv ]; then
    python3 -m venv .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.9,<1"
  fi
  UV=.tools/bin/uv
fi
command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  pipeline) exec "$UV" run --frozen xray run "$@" ;;
  test) exec "$UV" run --frozen pytest "$@" ;;
  *) echo "usage: ./dev.sh pipeline|test [extra arguments]" >&2; exit 2 ;;
esac
