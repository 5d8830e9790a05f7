"""Every client against one server with TLS and API keys (README: Security): the Python client
(sync and asyncio), squeeze-cli and the OpenAI-compatible endpoint over HTTPS. Each is refused
without a key or without TLS, works with them, and sees only its own tenant's contexts.
Certificates are made at test time with the openssl command (nothing secret is committed)."""
import asyncio
import http.client
import json
import os
import ssl
import subprocess
import tempfile
import unittest

import grpc

import squeeze
import squeeze.aio

import harness

KEY_A = "key-of-tenant-a-0123456789"
KEY_B = "key-of-tenant-b-0123456789"
CLI = harness.binary("squeeze-cli")


def make_pki(dir):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", f"{dir}/ca.key", "-out", f"{dir}/ca.pem", "-days", "2",
        "-subj", "/CN=squeeze-test-ca")
    with open(f"{dir}/server.ext", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("req", *ec, "-keyout", f"{dir}/server.key", "-out", f"{dir}/server.csr",
        "-subj", "/CN=server")
    run("x509", "-req", "-in", f"{dir}/server.csr", "-CA", f"{dir}/ca.pem", "-CAkey",
        f"{dir}/ca.key", "-CAcreateserial", "-days", "2", "-out", f"{dir}/server.pem",
        "-extfile", f"{dir}/server.ext")


class SecureClientsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="squeeze-secure-")
        make_pki(cls.dir)
        cls.ca = f"{cls.dir}/ca.pem"
        with open(f"{cls.dir}/keys", "w") as f:
            f.write(f"{KEY_A} tenant-a\n{KEY_B} tenant-b\n")
        for name, key in (("a", KEY_A), ("b", KEY_B)):
            with open(f"{cls.dir}/key-{name}", "w") as f:
                f.write(key + "\n")
        cls.http_port = harness.free_port()
        cls.server = harness.Server(
            f"--tls_cert_file={cls.dir}/server.pem", f"--tls_key_file={cls.dir}/server.key",
            f"--api_keys_file={cls.dir}/keys",
            f"--openai_address=127.0.0.1:{cls.http_port}", metrics=False).start()
        cls.a = squeeze.Client(cls.server.address, timeout=120, ca_file=cls.ca, api_key=KEY_A)
        cls.b = squeeze.Client(cls.server.address, timeout=120, ca_file=cls.ca, api_key=KEY_B)
        cls.info = cls.a.register_context("docs", harness.document(1500))

    @classmethod
    def tearDownClass(cls):
        cls.a.close()
        cls.b.close()
        cls.server.stop()

    def test_python_client_needs_tls_and_a_key_and_sees_its_tenant(self):
        self.assertEqual(self.info.name, "docs")
        answer = self.a.complete("\nQuestion: Which river?", "docs", max_tokens=4, temperature=0,
                                 ignore_eos=True)
        self.assertEqual(len(answer.token_ids), 4)
        self.assertEqual([c.name for c in self.a.list_contexts()], ["docs"])
        self.assertEqual(self.b.list_contexts(), [])
        with self.assertRaises(squeeze.NotFound):
            self.b.get_context("docs")
        with self.assertRaises(squeeze.NotFound):
            self.b.complete("Hi", "docs", max_tokens=1)
        # The same content under the same name is B's own registration, never A's reused.
        mine = self.b.register_context("docs", harness.document(1500))
        self.assertFalse(mine.reused)
        self.assertTrue(self.b.delete_context("docs"))
        self.assertEqual(self.a.get_context("docs").content_hash, self.info.content_hash)
        with squeeze.Client(self.server.address, ca_file=self.ca, timeout=30) as anonymous:
            with self.assertRaises(squeeze.SqueezeError) as cm:
                anonymous.list_contexts()
            self.assertEqual(cm.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            self.assertTrue(anonymous.health())  # probes need no key
        with squeeze.Client(self.server.address, api_key=KEY_A, timeout=10) as plaintext:
            with self.assertRaises(squeeze.SqueezeError) as cm:
                plaintext.list_contexts()
            self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)

    def test_asyncio_client(self):
        async def run():
            async with squeeze.aio.AsyncClient(self.server.address, ca_file=self.ca,
                                               api_key=KEY_A, timeout=120) as c:
                names = [x.name for x in await c.list_contexts()]
                text = (await c.complete("\nQuestion:", "docs", max_tokens=2,
                                         ignore_eos=True)).token_ids
                return names, text
        names, ids = asyncio.run(run())
        self.assertIn("docs", names)
        self.assertEqual(len(ids), 2)

    def cli(self, *args, key="a"):
        env = dict(os.environ)
        env.pop("SQUEEZE_API_KEY", None)
        flags = [f"--server={self.server.address}", f"--tls_ca_file={self.ca}"]
        if key:
            flags.append(f"--api_key_file={self.dir}/key-{key}")
        return subprocess.run([CLI, *flags, *args], capture_output=True, text=True, timeout=120,
                              env=env)

    def test_cli(self):
        out = self.cli("list")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("docs", out.stdout)
        out = self.cli("generate", "--context=docs", "--input=\nQuestion:", "--max_tokens=2")
        self.assertEqual(out.returncode, 0, out.stderr)
        out = self.cli("list", key="b")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("docs", out.stdout)
        out = self.cli("list", key=None)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("UNAUTHENTICATED", out.stderr)
        # The key from the environment, as the flag's help says.
        env = dict(os.environ, SQUEEZE_API_KEY=KEY_A)
        out = subprocess.run([CLI, f"--server={self.server.address}", f"--tls_ca_file={self.ca}",
                              "list"], capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("docs", out.stdout)

    def openai(self, method, path, body=None, key=KEY_A):
        context = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.http_port, context=context,
                                           timeout=120)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
        r = conn.getresponse()
        status, text = r.status, r.read().decode()
        conn.close()
        return status, text

    def test_openai_endpoint_over_https_with_keys(self):
        body = {"model": "test-model", "prompt": "\nQuestion:", "context": "docs",
                "max_tokens": 2, "temperature": 0, "ignore_eos": True}
        status, text = self.openai("POST", "/v1/completions", body)
        self.assertEqual(status, 200, text)
        self.assertEqual(json.loads(text)["usage"]["completion_tokens"], 2)
        status, text = self.openai("POST", "/v1/completions", body, key=None)
        self.assertEqual(status, 401, text)
        status, text = self.openai("GET", "/v1/models", key="not-a-key-0123456789")
        self.assertEqual(status, 401, text)
        status, _ = self.openai("GET", "/v1/models")
        self.assertEqual(status, 200)
        # Tenant B does not see tenant A's context.
        status, text = self.openai("POST", "/v1/completions", body, key=KEY_B)
        self.assertEqual(status, 404, text)
        # Plain HTTP is not served.
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        with self.assertRaises((ConnectionError, http.client.HTTPException, OSError)):
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
        conn.close()


if __name__ == "__main__":
    unittest.main()
