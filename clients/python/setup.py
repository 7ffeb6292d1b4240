"""Builds the jobmesh package, generating its gRPC stubs from the repository's
proto/ directory first (they are never committed or edited by hand).

The stubs land in src/jobmesh/v1/ (git-ignored): the protos' package is
`jobmesh.v1`, so the generated modules import each other as `jobmesh.v1.…`,
inside this package. `google.api` comes from googleapis-common-protos.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
OUT = HERE / "src"


def generate():
    if not PROTO_ROOT.is_dir():
        if (OUT / "jobmesh" / "v1" / "job_pb2.py").exists():
            return  # an sdist built earlier carries them
        sys.exit(f"cannot generate the stubs: {PROTO_ROOT} not found (install from a jobmesh checkout)")
    import grpc_tools  # a build requirement

    wkt = Path(grpc_tools.__file__).resolve().parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "jobmesh" / "v1").glob("*.proto"))
    (OUT / "jobmesh" / "v1").mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}", f"-I{PROTO_ROOT / 'third_party' / 'googleapis'}", f"-I{wkt}",
        f"--python_out={OUT}", f"--pyi_out={OUT}", f"--grpc_python_out={OUT}",
        *protos,
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)
    (OUT / "jobmesh" / "v1" / "__init__.py").write_text('"""Generated from proto/jobmesh/v1 at build time."""\n')


class BuildWithStubs(build_py):
    def run(self):
        generate()
        super().run()


if os.environ.get("JOBMESH_SKIP_STUBS") != "1":
    generate()

setup(cmdclass={"build_py": BuildWithStubs})
