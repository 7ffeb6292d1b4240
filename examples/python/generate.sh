#!/usr/bin/env bash
# Generates the Python gRPC stubs for the jobmesh public API into ./jobmesh_pb/.
#
# Layout of the output (mirrors the proto import paths, so the generated
# `from jobmesh.v1 import job_pb2` / `from google.api import annotations_pb2`
# imports resolve once jobmesh_pb/ is on sys.path):
#
#   jobmesh_pb/jobmesh/v1/job_service_pb2.py       messages
#   jobmesh_pb/jobmesh/v1/job_service_pb2_grpc.py  JobServiceStub
#   jobmesh_pb/google/api/annotations_pb2.py       HTTP annotations used by the protos
#
# No __init__.py files are written on purpose: `jobmesh` and `google` are
# implicit namespace packages, so `google.api` (ours) and `google.protobuf`
# (from the protobuf wheel) can live side by side.
set -euo pipefail
cd "$(dirname "$0")"

PROTO_ROOT=../../proto
GOOGLEAPIS="$PROTO_ROOT/third_party/googleapis"
OUT=jobmesh_pb

# The well-known types (google/protobuf/struct.proto, timestamp.proto, ...) ship
# inside the grpcio-tools wheel.
WKT_INCLUDE="$(python3 -c \
  'import importlib.resources as r; print(r.files("grpc_tools") / "_proto")')"

rm -rf "$OUT"
mkdir -p "$OUT"

# Files are named by their import path (relative to an -I root), not by their
# location on disk: "third_party/googleapis/google/api/..." would otherwise be
# registered twice under two names.
PROTOS=(google/api/annotations.proto google/api/http.proto)
for f in "$PROTO_ROOT"/jobmesh/v1/*.proto; do
  PROTOS+=("${f#"$PROTO_ROOT"/}")
done

python3 -m grpc_tools.protoc \
  -I "$PROTO_ROOT" \
  -I "$GOOGLEAPIS" \
  -I "$WKT_INCLUDE" \
  --python_out="$OUT" \
  --pyi_out="$OUT" \
  --grpc_python_out="$OUT" \
  "${PROTOS[@]}"

echo "generated $(find "$OUT" -name '*.py' | wc -l | tr -d ' ') modules in $(pwd)/$OUT"
