"""Installable Squeeze Python client: `pip install client/python` from a source checkout.

The squeeze.v1 modules are generated from proto/squeeze/v1/squeeze.proto at build time
(generate_proto.py); they are not kept in the repository.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_proto  # noqa: E402


class BuildWithProto(build_py):
    def run(self):
        super().run()
        generate_proto.generate(self.build_lib)


setup(
    name="squeeze-client",
    version="0.1.0",
    description="Python client (sync and asyncio) for the Squeeze inference server",
    packages=["squeeze"],
    python_requires=">=3.9",
    install_requires=["grpcio>=1.51", "protobuf>=3.21"],
    cmdclass={"build_py": BuildWithProto},
)
