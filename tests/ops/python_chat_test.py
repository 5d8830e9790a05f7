"""Chat through the Python client against a real squeeze-server: a document registered as the
system message of a chat (chat_document="system"), conversations sent as messages that continue
it (dicts or (role, content) pairs), a whole conversation without a context, and the client's
own argument errors. That the registered context is exactly the template's rendered prefix is
tested in C++ (tests/e2e/chat_e2e_test.cc)."""
import json
import os
import shutil
import tempfile
import unittest

import squeeze

import harness

# A small ChatML-like template (the test model's tokenizer has none of its own).
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}"
            "\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def chat_model_dir():
    """The test model with a chat template in its tokenizer_config.json."""
    src = harness.MODEL_DIR
    out = tempfile.mkdtemp(prefix="squeeze-chat-model-")
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(os.path.join(src, name), out)
    os.symlink(os.path.abspath(os.path.join(src, "model.safetensors")),
               os.path.join(out, "model.safetensors"))
    with open(os.path.join(src, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["chat_template"] = TEMPLATE
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return out


class PythonChatTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = chat_model_dir()
        cls.server = harness.Server(f"--model={cls.model}").start()
        cls.client = squeeze.Client(cls.server.address, timeout=120)
        cls.doc = harness.document(1200)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        shutil.rmtree(cls.model, ignore_errors=True)

    def test_registered_chat_document_and_conversations(self):
        info = self.client.register_context("chat-doc", self.doc, chat_document="system")
        self.assertGreater(info.num_tokens, 100)
        options = dict(max_tokens=8, temperature=0, ignore_eos=True, mode="dense")
        # Messages continue the registered document (the server refuses them after a context
        # not registered as a chat document, below, so chat_document reached it).
        turns = [{"role": "user", "content": "Which river runs through the city?"}]
        first = self.client.complete(turns, "chat-doc", **options)
        self.assertEqual(len(first.token_ids), 8)
        self.assertEqual(first.usage.context_tokens, info.num_tokens)
        self.assertGreater(first.usage.query_tokens, 5)
        turns += [("assistant", first.text), ("user", "And the bridge?")]  # pairs work too
        second = self.client.complete(turns, "chat-doc", **options)
        self.assertEqual(len(second.token_ids), 8)
        self.assertGreater(second.usage.query_tokens, first.usage.query_tokens)
        # Greedy decoding of the same conversation is deterministic.
        self.assertEqual(self.client.complete(turns, "chat-doc", **options).token_ids,
                         second.token_ids)
        # A whole conversation without a context.
        alone = self.client.complete([("system", "Be brief."), ("user", "Hello")], **options)
        self.assertEqual(len(alone.token_ids), 8)
        self.assertEqual(alone.usage.context_tokens, 0)
        # The same text registered without chat_document takes no messages.
        self.client.register_context("plain-doc", self.doc, add_bos=False)
        with self.assertRaises(squeeze.FailedPrecondition) as cm:
            self.client.complete(turns, "plain-doc", **options)
        self.assertIn("not registered as a chat document", str(cm.exception))

    def test_argument_errors(self):
        with self.assertRaises(ValueError):
            self.client.register_context("x", "text", chat_document="assistant")
        with self.assertRaises(TypeError):
            self.client.complete([{"role": "user"}], max_tokens=1)
        with self.assertRaises(TypeError):
            self.client.complete([("user", 3)], max_tokens=1)


if __name__ == "__main__":
    unittest.main()
