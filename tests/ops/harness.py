"""Helpers for the operations tests: real squeeze-server processes on loopback ports.

Paths come from the environment that CMake gives each test (tests/ops/CMakeLists.txt):
SQUEEZE_BUILD_DIR (binaries), SQUEEZE_TEST_MODEL_DIR (the random-weight test model),
SQUEEZE_SOURCE_DIR; PYTHONPATH holds the generated Python client.
"""
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

BUILD_DIR = os.environ.get("SQUEEZE_BUILD_DIR", "build")
MODEL_DIR = os.environ.get("SQUEEZE_TEST_MODEL_DIR", os.path.join(BUILD_DIR, "test-model"))
SOURCE_DIR = os.environ.get("SQUEEZE_SOURCE_DIR", ".")


def binary(name):
    return os.path.join(BUILD_DIR, name)


def free_port():
    """A loopback port that was free a moment ago (for servers that cannot report theirs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def document(chars=2500):
    with open(os.path.join(SOURCE_DIR, "tests", "data", "demo_document.txt")) as f:
        return f.read()[:chars]


class Server:
    """One squeeze-server process on the test model (CPU), gRPC on a port it picks itself.

    `metrics=True` serves /metrics and the health endpoints on `metrics_port`."""

    def __init__(self, *args, metrics=True, name="server", workdir=None):
        self.workdir = workdir or tempfile.mkdtemp(prefix="squeeze-ops-")
        self.port_file = os.path.join(self.workdir, f"{name}.port")
        self.log_path = os.path.join(self.workdir, f"{name}.log")
        self.metrics_port = free_port() if metrics else 0
        self.args = [binary("squeeze-server"), f"--model={MODEL_DIR}", "--device=cpu",
                     "--address=127.0.0.1:0", f"--port_file={self.port_file}", "--window=32",
                     "--grace_seconds=5",
                     f"--metrics_address=127.0.0.1:{self.metrics_port}" if metrics else
                     "--metrics_address="] + list(args)
        self.proc = None
        self.port = 0

    def start(self, timeout=120):
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"squeeze-server exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if os.path.exists(self.port_file):
                with open(self.port_file) as f:
                    self.port = int(f.read().strip())
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("squeeze-server did not start in time:\n" + self.log_tail())

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def http_get(self, path, port=None):
        """(status, body) of GET http://127.0.0.1:PORT/PATH (default: the metrics port)."""
        url = f"http://127.0.0.1:{port or self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name, labels=""):
        """The value of one sample of the Prometheus text at /metrics (0 when absent)."""
        _, body = self.http_get("/metrics")
        key = name + (("{" + labels + "}") if labels else "")
        for line in body.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def kill(self):
        self.stop(signal.SIGKILL)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
