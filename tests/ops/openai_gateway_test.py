"""The OpenAI-compatible endpoint (--openai_address) of a real squeeze-server, through a real
HTTP client (urllib / http.client): completions with a registered context, streaming SSE,
logprobs, stop strings, errors as OpenAI error objects, chat without a chat template, models,
and a client that leaves a stream cancelling the request."""
import http.client
import json
import time
import unittest
import urllib.error
import urllib.request

import squeeze

import harness


class OpenAIGatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.http_port = harness.free_port()
        cls.server = harness.Server(f"--openai_address=127.0.0.1:{cls.http_port}").start()
        cls.client = squeeze.Client(cls.server.address, timeout=120)
        cls.info = cls.client.register_context("docs", harness.document())

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def post(self, path, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.headers.get("Content-Type"), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read().decode()

    def completion(self, **fields):
        body = {"model": "test-model", "prompt": "\nQuestion: Which river?", "context": "docs",
                "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        body.update(fields)
        return self.post("/v1/completions", body)

    def test_completion_matches_grpc(self):
        status, ctype, text = self.completion()
        self.assertEqual(status, 200, text)
        self.assertTrue(ctype.startswith("application/json"))
        body = json.loads(text)
        self.assertEqual(body["object"], "text_completion")
        choice = body["choices"][0]
        self.assertEqual(choice["finish_reason"], "length")
        grpc_answer = self.client.complete("\nQuestion: Which river?", "docs", max_tokens=8,
                                           temperature=0, ignore_eos=True)
        self.assertEqual(choice["text"], grpc_answer.text)
        usage = body["usage"]
        self.assertEqual(usage["completion_tokens"], 8)
        self.assertEqual(body["squeeze"]["context_tokens"], self.info.num_tokens)
        self.assertEqual(usage["prompt_tokens"],
                         self.info.num_tokens + body["squeeze"]["query_tokens"])
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + 8)
        self.assertEqual(body["squeeze"]["attention_mode"], "squeezed")
        self.assertLess(body["squeeze"]["kv_budget"], 1.0)
        # Dense on request, through the extension field.
        status, _, text = self.completion(attention_mode="dense")
        self.assertEqual(json.loads(text)["squeeze"]["kv_budget"], 1.0)

    def test_streaming_sse(self):
        _, _, whole = self.completion()
        whole_text = json.loads(whole)["choices"][0]["text"]
        status, ctype, text = self.completion(stream=True)
        self.assertEqual(status, 200, text)
        self.assertTrue(ctype.startswith("text/event-stream"))
        events = [l[len("data: "):] for l in text.split("\n\n") if l.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertGreaterEqual(len(chunks), 2)
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks), whole_text)
        self.assertTrue(all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1]))
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 8)
        self.assertEqual(len({c["id"] for c in chunks}), 1)

    def test_logprobs_stop_and_token_prompt(self):
        status, _, text = self.completion(logprobs=2)
        lp = json.loads(text)["choices"][0]["logprobs"]
        self.assertEqual(len(lp["tokens"]), 8)
        self.assertEqual(len(lp["token_logprobs"]), 8)
        self.assertTrue(all(v <= 0 for v in lp["token_logprobs"]))
        self.assertTrue(all(1 <= len(t) <= 2 for t in lp["top_logprobs"]))
        full = json.loads(self.completion()[2])["choices"][0]["text"]
        stop = next(full[i:i + 2] for i in range(1, len(full) - 1) if full[i:i + 2].strip())
        body = json.loads(self.completion(stop=[stop])[2])
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")
        self.assertEqual(body["choices"][0]["text"], full[:full.index(stop)])
        ids = list(self.client.tokenize("\nQuestion: Which river?").ids)
        body = json.loads(self.completion(prompt=ids)[2])
        self.assertEqual(body["choices"][0]["text"], full)

    def test_errors_are_openai_objects(self):
        cases = [
            (dict(context="no-such"), 404, "NOT_FOUND"),
            (dict(temperature=-1), 400, "INVALID_ARGUMENT"),
            (dict(n=2), 501, "UNIMPLEMENTED"),
            (dict(echo=True), 501, "UNIMPLEMENTED"),
            (dict(max_tokens="many"), 400, "INVALID_ARGUMENT"),
            (dict(prompt=None), 400, "INVALID_ARGUMENT"),
        ]
        for fields, code, name in cases:
            status, ctype, text = self.completion(**fields)
            self.assertEqual(status, code, (fields, text))
            err = json.loads(text)["error"]
            self.assertEqual(err["code"], name)
            self.assertTrue(err["message"])
        status, _, text = self.post("/v1/completions", None, raw=b"{not json")
        self.assertEqual(status, 400)
        self.assertIn("JSON", json.loads(text)["error"]["message"])
        status, _, text = self.completion(context="no-such", stream=True)
        self.assertEqual(status, 404)  # refused before the stream begins

    def test_chat_needs_a_chat_template(self):
        status, _, text = self.post("/v1/chat/completions", {
            "model": "test-model", "context": "docs",
            "messages": [{"role": "user", "content": "Which river?"}]})
        self.assertEqual(status, 400, text)
        err = json.loads(text)["error"]
        self.assertIn("chat template", err["message"])
        self.assertEqual(err["code"], "FAILED_PRECONDITION")
        status, _, text = self.post("/v1/chat/completions", {"model": "m", "messages": []})
        self.assertEqual(status, 400)
        self.assertIn("messages", json.loads(text)["error"]["message"])

    def test_models(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v1/models") as r:
            body = json.loads(r.read())
        self.assertEqual(body["data"][0]["id"], "test-model")

    def test_leaving_a_stream_cancels_the_request(self):
        before = self.server.metric("squeeze_requests_total",
                                    'finish_reason="abort",status="CANCELLED"')
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({
            "prompt": "\nQuestion:", "context": "docs", "max_tokens": 3000, "stream": True,
            "ignore_eos": True, "attention_mode": "dense"}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.read(16).startswith(b"data: "))
        conn.sock.close()
        conn.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.server.metric("squeeze_requests_total",
                                  'finish_reason="abort",status="CANCELLED"') > before:
                break
            time.sleep(0.1)
        self.assertGreater(self.server.metric("squeeze_requests_total",
                                              'finish_reason="abort",status="CANCELLED"'), before)
        self.assertEqual(self.server.metric("squeeze_num_requests_running"), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
