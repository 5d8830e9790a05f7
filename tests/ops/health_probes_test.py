"""The Kubernetes probe endpoints on the metrics port have distinct meanings: /startupz (loaded
and serving), /readyz (accepting new work: off while draining), /livez (off only after an
engine fault). A SIGTERM with a stream in flight turns readiness off while liveness stays on,
the stream finishes, and new work is refused."""
import threading
import time
import unittest

import squeeze

import harness


class HealthProbesTest(unittest.TestCase):
    def test_probes_through_start_and_drain(self):
        server = harness.Server("--grace_seconds=30").start()
        try:
            for path, body in (("/startupz", "started"), ("/readyz", "ready"),
                               ("/livez", "live")):
                status, text = server.http_get(path)
                self.assertEqual((status, text.strip()), (200, body), path)
            status, _ = server.http_get("/nope")
            self.assertEqual(status, 404)
            client = squeeze.Client(server.address, timeout=120)
            client.register_context("docs", harness.document(1500))
            result = {}

            def long_stream():
                try:
                    result["completion"] = client.complete(
                        "\nQuestion:", "docs", max_tokens=600, ignore_eos=True, mode="dense")
                except squeeze.SqueezeError as e:
                    result["error"] = e

            stream = threading.Thread(target=long_stream)
            stream.start()
            deadline = time.time() + 30
            while server.metric("squeeze_num_requests_running") < 1 and time.time() < deadline:
                time.sleep(0.02)
            server.proc.send_signal(15)  # SIGTERM: drain
            ready = None
            while time.time() < deadline:
                ready = server.http_get("/readyz")
                if ready[0] == 503:
                    break
                time.sleep(0.02)
            self.assertEqual(ready[0], 503)
            self.assertIn("draining", ready[1])
            self.assertEqual(server.http_get("/livez")[0], 200)  # draining is not dead
            with self.assertRaises(squeeze.Unavailable):
                client.complete("\nQuestion:", "docs", max_tokens=2)
            stream.join(60)
            self.assertNotIn("error", result)
            self.assertEqual(len(result["completion"].token_ids), 600)
            client.close()
            self.assertEqual(server.proc.wait(60), 0)
        finally:
            server.kill()


if __name__ == "__main__":
    unittest.main(verbosity=2)
