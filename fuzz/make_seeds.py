#!/usr/bin/env python3
"""Writes the small hand-made seed inputs of fuzz/corpus (run from the repository root).
The context-file seeds come from a real server instead: see fuzz/README.md."""
import json
import struct
from pathlib import Path

root = Path(__file__).resolve().parent / "corpus"


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


(root / "safetensors/f32.safetensors").write_bytes(
    safetensors([("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))], {"format": "pt"}))
(root / "safetensors/mixed.safetensors").write_bytes(
    safetensors([("a", "BF16", [3], b"\x80\x3f\x00\x40\x40\x40"), ("b", "I32", [], struct.pack("<i", 7)),
                 ("c", "F16", [0], b"")]))

bytes_to_unicode = {}
n = 0
for b in range(256):
    if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
        bytes_to_unicode[b] = chr(b)
    else:
        bytes_to_unicode[b] = chr(256 + n)
        n += 1
vocab = {bytes_to_unicode[b]: b for b in range(256)}
merges = ["Ġ t", "h e", "Ġt he", "l o", "lo w"]
for m in merges:
    vocab[m.replace(" ", "")] = len(vocab)
vocab["<|bos|>"] = len(vocab)
tokenizer = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": vocab["<|bos|>"], "content": "<|bos|>", "special": True,
                      "normalized": False, "lstrip": False, "rstrip": False, "single_word": False}],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": True},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
                                  {"Sequence": {"id": "A", "type_id": 0}}]},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "ignore_merges": False, "vocab": vocab, "merges": merges},
}
(root / "tokenizer_json/byte_level.json").write_text(json.dumps(tokenizer, ensure_ascii=False))


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(number, wire, payload):
    key = varint((number << 3) | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


prompt_text = field(1, 2, b"Hello there")
prompt_ids = field(2, 2, field(1, 2, b"".join(varint(i) for i in (1, 5, 9, 300))))
sampling = field(1, 5, struct.pack("<f", 0.7)) + field(2, 5, struct.pack("<f", 0.9))
attention = field(1, 0, varint(1)) + field(2, 1, struct.pack("<d", 0.1))
generate = (field(1, 2, b"docs") + field(2, 2, prompt_text) + field(3, 2, sampling) +
            field(4, 0, varint(16)) + field(5, 2, b"\n\n") + field(6, 0, varint(2)) +
            field(7, 0, varint(1)) + field(8, 0, varint(3)) + field(9, 2, attention) +
            field(10, 2, b"req-1"))
index = field(2, 1, struct.pack("<d", 0.05)) + field(3, 0, varint(1)) + field(5, 0, varint(32))
register = field(1, 2, b"docs") + field(2, 2, prompt_ids) + field(3, 0, varint(1)) + field(4, 2, index)
(root / "convert/generate").write_bytes(b"\x00" + generate)
(root / "convert/register").write_bytes(b"\x01" + register)
(root / "convert/get").write_bytes(b"\x02" + field(1, 2, b"docs"))
