#!/usr/bin/env bash
# The whole test suite: lint and format check, tests, docs build.
source "$(dirname "$0")/_env.sh"
ruff check raserec_adapter examples tests benchmarks tools
ruff format --check --quiet .
python -m pytest -q "$@"
mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/raserec-site"
