#!/usr/bin/env python3
"""Generates the squeeze.v1 protobuf and gRPC modules into OUT/squeeze/v1/.

The generated code is never committed: it is made from proto/squeeze/v1/squeeze.proto when the
package is built (setup.py) or tested (CMake). It uses the system `protoc` with the gRPC Python
plugin (Debian: protobuf-compiler, protobuf-compiler-grpc); without that plugin it falls back to
`grpc_tools.protoc` (the grpcio-tools package; Debian 12's 1.14 predates proto3 `optional`, so
the plugin is preferred).
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO = os.path.join("squeeze", "v1", "squeeze.proto")


def generate(out_dir, proto_root=DEFAULT_PROTO_ROOT):
    target = os.path.join(out_dir, "squeeze", "v1")
    os.makedirs(target, exist_ok=True)
    source = os.path.join(proto_root, PROTO)
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source} not found: build from a Squeeze source checkout")
    plugin = shutil.which("grpc_python_plugin")
    protoc = shutil.which("protoc")
    if protoc and plugin:
        cmd = [protoc, f"--proto_path={proto_root}", f"--python_out={out_dir}",
               f"--grpc_out={out_dir}", f"--plugin=protoc-gen-grpc={plugin}", source]
    else:
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto_root}",
               f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", source]
    subprocess.run(cmd, check=True)
    init = os.path.join(target, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as f:
            f.write("# Generated from proto/squeeze/v1/squeeze.proto.\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory that holds the squeeze package")
    parser.add_argument("--proto_root", default=DEFAULT_PROTO_ROOT)
    args = parser.parse_args()
    generate(args.out, args.proto_root)
