"""The Python client (client/python) against a real squeeze-server: sync and asyncio calls,
streaming, typed errors, cancellation, and the routing header (seen by a recording server)."""
import asyncio
import time
import unittest

import grpc

import squeeze
import squeeze.aio
from squeeze.v1 import squeeze_pb2 as pb

import harness
from fake_server import FakeServer


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server().start()
        cls.client = squeeze.Client(cls.server.address, timeout=120)
        cls.doc = harness.document()
        events = []
        cls.info = cls.client.register_context("docs", cls.doc, on_progress=events.append)
        cls.events = events

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def test_register_reports_progress_and_is_idempotent(self):
        self.assertEqual(self.info.name, "docs")
        self.assertGreater(self.info.num_tokens, 300)
        self.assertTrue(self.info.index.present)
        stages = [e.stage for e in self.events]
        self.assertIn(pb.RegisterContextEvent.PREFILL, stages)
        self.assertEqual(stages[-1], pb.RegisterContextEvent.DONE)
        again = self.client.register_context("docs", self.doc)
        self.assertTrue(again.reused)
        self.assertEqual(again.content_hash, self.info.content_hash)
        with self.assertRaises(squeeze.AlreadyExists) as cm:
            self.client.register_context("docs", "other content")
        self.assertEqual(cm.exception.code, grpc.StatusCode.ALREADY_EXISTS)

    def test_generate_streams_and_complete_gathers(self):
        chunks = list(self.client.generate("\nQuestion: Which river?", "docs", max_tokens=12,
                                           temperature=0, ignore_eos=True))
        self.assertGreaterEqual(len(chunks), 2)
        self.assertEqual(sum(len(c.token_ids) for c in chunks), 12)
        last = chunks[-1]
        self.assertEqual(last.finish_reason, pb.LENGTH)
        self.assertEqual(last.usage.context_tokens, self.info.num_tokens)
        self.assertEqual(last.usage.completion_tokens, 12)
        whole = self.client.complete("\nQuestion: Which river?", "docs", max_tokens=12,
                                     temperature=0, ignore_eos=True)
        self.assertEqual(whole.text, "".join(c.text for c in chunks))  # greedy: same tokens
        self.assertEqual(whole.token_ids, [t for c in chunks for t in c.token_ids])
        self.assertEqual(whole.finish_reason, "LENGTH")

    def test_token_ids_logprobs_stop_ids_and_modes(self):
        ids = self.client.tokenize("Question: where?").ids
        self.assertGreater(len(ids), 2)
        dense = self.client.complete(list(ids), "docs", max_tokens=6, temperature=0,
                                     ignore_eos=True, logprobs=3, mode="dense")
        self.assertEqual(len(dense.logprobs), 6)
        self.assertTrue(all(len(lp.top) == 3 for lp in dense.logprobs))
        self.assertTrue(all(lp.logprob <= 0 for lp in dense.logprobs))
        self.assertEqual(dense.usage.kv_budget, 1.0)
        squeezed = self.client.complete(list(ids), "docs", max_tokens=6, temperature=0,
                                        ignore_eos=True, mode="squeezed", budget=0.2)
        self.assertLess(squeezed.usage.kv_budget, 1.0)
        # A stop token id ends the stream at that token.
        stop_at = dense.token_ids[2]
        stopped = self.client.complete(list(ids), "docs", max_tokens=6, temperature=0,
                                       ignore_eos=True, mode="dense", stop_token_ids=[stop_at])
        self.assertEqual(stopped.finish_reason, "STOP")
        self.assertLess(len(stopped.token_ids), 6)
        # Scoring the input: the greedy answer appended to the question scores as generated.
        scored = self.client.complete(list(ids) + dense.token_ids[:3], "docs", max_tokens=1,
                                      temperature=0, mode="dense", prompt_logprobs=1)
        self.assertEqual(scored.prompt_token_ids, list(ids) + dense.token_ids[:3])
        self.assertEqual(len(scored.prompt_logprobs), len(ids) + 2)
        for i in range(3):
            got = scored.prompt_logprobs[len(ids) - 1 + i]
            self.assertAlmostEqual(got.logprob, dense.logprobs[i].logprob, delta=1e-3)
            self.assertEqual(got.top[0].id, dense.token_ids[i])

    def test_typed_errors(self):
        with self.assertRaises(squeeze.NotFound) as cm:
            self.client.complete("hi", "no-such-context", max_tokens=2)
        self.assertIn("no-such-context", cm.exception.details)
        with self.assertRaises(squeeze.InvalidArgument):
            self.client.complete("hi", "docs", max_tokens=2, temperature=-1)
        with self.assertRaises(squeeze.NotFound):
            self.client.get_context("no-such-context")
        with self.assertRaises(TypeError):
            self.client.complete("hi", "docs", stop="x")
        dead = squeeze.Client(f"127.0.0.1:{harness.free_port()}", timeout=2)
        with self.assertRaises((squeeze.Unavailable, squeeze.DeadlineExceeded)):
            dead.list_contexts()
        dead.close()

    def test_unary_calls_and_health(self):
        self.assertTrue(self.client.health())
        self.assertTrue(self.client.health("squeeze.v1.Squeeze"))
        names = [c.name for c in self.client.list_contexts()]
        self.assertIn("docs", names)
        self.assertEqual(self.client.get_context("docs").content_hash, self.info.content_hash)
        self.client.register_context("scratch", self.doc[:400])
        self.assertTrue(self.client.delete_context("scratch"))
        with self.assertRaises(squeeze.NotFound):
            self.client.delete_context("scratch")

    def test_closing_the_stream_cancels_the_request(self):
        stream = self.client.generate("\nQuestion:", "docs", max_tokens=2000, ignore_eos=True,
                                      temperature=0)
        next(stream)
        stream.close()
        deadline = time.time() + 30
        while time.time() < deadline and self.server.metric("squeeze_num_requests_running") > 0:
            time.sleep(0.1)
        self.assertEqual(self.server.metric("squeeze_num_requests_running"), 0)
        self.assertGreater(self.server.metric("squeeze_requests_total",
                                              'finish_reason="abort",status="CANCELLED"'), 0,
                           self.server.http_get("/metrics")[1])

    def test_asyncio_client(self):
        async def run():
            async with squeeze.aio.AsyncClient(self.server.address, timeout=120) as client:
                self.assertTrue(await client.health())
                questions = [f"\nQuestion: item {i}?" for i in range(4)]
                results = await asyncio.gather(*[
                    client.complete(q, "docs", max_tokens=5, temperature=0, ignore_eos=True)
                    for q in questions])
                chunks = []
                async for chunk in client.generate(questions[0], "docs", max_tokens=5,
                                                   temperature=0, ignore_eos=True):
                    chunks.append(chunk)
                with self.assertRaises(squeeze.NotFound):
                    await client.complete("x", "no-such-context", max_tokens=1)
                contexts = await client.list_contexts()
                return results, chunks, contexts

        results, chunks, contexts = asyncio.run(run())
        self.assertTrue(all(len(r.token_ids) == 5 for r in results))
        self.assertEqual("".join(c.text for c in chunks), results[0].text)
        sync = self.client.complete("\nQuestion: item 0?", "docs", max_tokens=5, temperature=0,
                                    ignore_eos=True)
        self.assertEqual(sync.token_ids, results[0].token_ids)
        self.assertIn("docs", [c.name for c in contexts])


class RoutingHeaderTest(unittest.TestCase):
    """Every call that names a context carries it in the x-squeeze-context metadata."""

    def test_header_on_context_calls(self):
        with FakeServer() as fake:
            with squeeze.Client(fake.address, timeout=10) as client:
                client.register_context("alpha", "text")
                client.complete("q", "beta", max_tokens=2)
                client.get_context("gamma")
                client.delete_context("delta")
                client.list_contexts()
            async def run():
                async with squeeze.aio.AsyncClient(fake.address, timeout=10) as client:
                    await client.complete("q", "epsilon", max_tokens=2)
            asyncio.run(run())
        seen = [(m, md.get(squeeze.CONTEXT_HEADER)) for m, _, md in fake.servicer.calls]
        self.assertEqual(seen, [("RegisterContext", "alpha"), ("Generate", "beta"),
                                ("GetContext", "gamma"), ("DeleteContext", "delta"),
                                ("ListContexts", None), ("Generate", "epsilon")])


if __name__ == "__main__":
    unittest.main(verbosity=2)
