"""squeeze-cli: --help lists every flag, errors name the gRPC code with a hint about --server,
--file=- / --input_file=- read stdin, --stop takes escaped commas, --stop_token_ids and
--logprobs reach the request and are shown, and context calls carry the routing header. The
requests the CLI sends are checked on a recording server, the rest against a real server."""
import os
import re
import subprocess
import unittest

import squeeze

import harness
from fake_server import FakeServer

CLI = harness.binary("squeeze-cli")


def cli(*args, stdin=None):
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, timeout=120)


class CliFlagsTest(unittest.TestCase):
    def test_help_lists_every_flag(self):
        with open(os.path.join(harness.SOURCE_DIR, "client", "cli.cc")) as f:
            flags = re.findall(r"ABSL_FLAG\(\s*[\w:<>]+,\s*(\w+),", f.read())
        self.assertGreater(len(flags), 25)
        out = cli("--help")
        text = out.stdout + out.stderr
        self.assertNotIn("No flags matched", text)
        for flag in flags:
            self.assertIn(f"--{flag}", text, f"--help does not document --{flag}")

    def test_server_help_lists_every_flag(self):
        with open(os.path.join(harness.SOURCE_DIR, "server", "main.cc")) as f:
            flags = re.findall(r"ABSL_FLAG\(\s*[\w:<>]+,\s*(\w+),", f.read())
        self.assertGreater(len(flags), 30)
        out = subprocess.run([harness.binary("squeeze-server"), "--help"], capture_output=True,
                             text=True, timeout=60)
        text = out.stdout + out.stderr
        for flag in flags:
            self.assertIn(f"--{flag}", text, f"squeeze-server --help does not document --{flag}")

    def test_request_fields_from_flags_and_stdin(self):
        with FakeServer() as fake:
            out = cli(f"--server={fake.address}", "generate", "--context=manual",
                      "--input_file=-", r"--stop=a\,b,c\\d,END", "--stop_token_ids=5,7",
                      "--logprobs=2", "--max_tokens=9", stdin="question from stdin")
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout.strip(), "hello")
            method, req, metadata = fake.servicer.calls[-1]
            self.assertEqual(method, "Generate")
            self.assertEqual(req.input.text, "question from stdin")
            self.assertEqual(list(req.stop), ["a,b", "c\\d", "END"])
            self.assertEqual(list(req.stop_token_ids), [5, 7])
            self.assertEqual(req.logprobs, 2)
            self.assertEqual(req.max_tokens, 9)
            self.assertEqual(metadata.get(squeeze.CONTEXT_HEADER), "manual")
            # One logprob line per token, with the alternatives.
            lines = [l for l in out.stderr.splitlines() if l.startswith("logprob ")]
            self.assertEqual(len(lines), 2)
            self.assertIn("id=11", lines[0])
            self.assertIn("12:-1.5000", lines[0])

            out = cli(f"--server={fake.address}", "register", "manual", "--file=-",
                      stdin="context text from stdin")
            self.assertEqual(out.returncode, 0, out.stderr)
            method, req, metadata = fake.servicer.calls[-1]
            self.assertEqual(req.content.text, "context text from stdin")
            self.assertEqual(metadata.get(squeeze.CONTEXT_HEADER), "manual")

            out = cli(f"--server={fake.address}", "generate", "--input=x", r"--stop=bad\q")
            self.assertEqual(out.returncode, 1)  # absl rejects the flag value
            self.assertIn("backslash", out.stderr)

    def test_errors_name_the_code_and_hint_at_server(self):
        out = cli(f"--server=127.0.0.1:{harness.free_port()}", "--timeout=3", "list")
        self.assertEqual(out.returncode, 1)
        self.assertRegex(out.stderr, r"error: (UNAVAILABLE|DEADLINE_EXCEEDED): ")
        self.assertIn("--server=host:port", out.stderr)
        with FakeServer() as fake:
            import grpc
            fake.servicer.error = (grpc.StatusCode.NOT_FOUND, "context 'x' not found")
            out = cli(f"--server={fake.address}", "get", "x")
            self.assertEqual(out.returncode, 1)
            self.assertIn("error: NOT_FOUND: context 'x' not found", out.stderr)
            self.assertNotIn("hint", out.stderr)


class CliRealServerTest(unittest.TestCase):
    def test_register_from_stdin_and_generate_with_logprobs(self):
        with harness.Server(metrics=False) as server:
            out = cli(f"--server={server.address}", "register", "doc", "--file=-",
                      stdin=harness.document(1500))
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertTrue(out.stdout.startswith("doc\t"))
            out = cli(f"--server={server.address}", "generate", "--context=doc",
                      "--input=\nQuestion:", "--max_tokens=5", "--temperature=0",
                      "--ignore_eos", "--logprobs=1")
            self.assertEqual(out.returncode, 0, out.stderr)
            lines = [l for l in out.stderr.splitlines() if l.startswith("logprob ")]
            self.assertEqual(len(lines), 5)
            self.assertTrue(all(len(l.split("\t")) == 4 for l in lines))  # pos id lp 1 top
            self.assertIn("finish=LENGTH", out.stderr)
            out = cli(f"--server={server.address}", "generate", "--context=nope", "--input=x")
            self.assertIn("error: NOT_FOUND", out.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
