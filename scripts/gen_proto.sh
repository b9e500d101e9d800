#!/usr/bin/env bash
# Regenerate the Python code for proto/fsagent/v1/*.proto in place (reproducible: pinned grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-proto}"
uv run --frozen python -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/fsagent/v1/*.proto
