#!/usr/bin/env python3
"""Writes the small hand-made seed inputs of fuzz/corpus (run from the repository root).
The context-file seeds come from a real server instead: see fuzz/README.md."""
import json
import struct
import subprocess
import tempfile
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

# tokenizer.json in the one layout the loader implements (Llama-3: Split on its regex, then
# ByteLevel without regex). The vocabulary holds only the bytes of the text the fuzz target
# encodes (plus a few more), not all 256: the target loads the seed on every execution, and a
# full byte table makes each one several times slower without reaching other code.
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def byte_level(text):
    return "".join(bytes_to_unicode[b] for b in text.encode())


def llama3_tokenizer(merges, pairs, added, extra_model=None, post_processor=True, split=None,
                     normalizer=None, text=""):
    symbols = sorted(set(byte_level("Hello wörld 123 <|eot|>  \n\tdone! ab" + text)))
    vocab = {s: i for i, s in enumerate(symbols)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "vocab": vocab,
             "merges": [[l, r] for l, r in merges] if pairs else [f"{l} {r}" for l, r in merges]}
    model.update(extra_model or {})
    added_tokens = []
    for content, special in added:
        vocab_id = len(vocab) + len(added_tokens)
        added_tokens.append({"id": vocab_id, "content": content, "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": not special,
                             "special": special})
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split or LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": model,
    }
    if post_processor and added_tokens:
        tokenizer["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": added_tokens[0]["content"], "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}]}
    return json.dumps(tokenizer, ensure_ascii=False)


merges = [("l", "o"), ("H", "e"), ("He", "l"), ("Hel", "lo"), ("Ġ", "w"), ("r", "l"), ("rl", "d"),
          ("d", "o"), ("do", "n"), ("don", "e"), ("1", "2"), ("12", "3"), ("Ġ", "Ġ")]
(root / "tokenizer_json/byte_level.json").unlink(missing_ok=True)
# Merges as [a, b] pairs, ignore_merges, a special BOS (the post-processor names it) and the
# special token the target's text contains.
(root / "tokenizer_json/llama3_pairs.json").write_text(llama3_tokenizer(
    merges, pairs=True, added=[("<|begin_of_text|>", True), ("<|eot|>", True)],
    extra_model={"ignore_merges": True}))
# Merges as "a b" strings, an unknown token, fuse_unk, a normalized (non-special) added token
# and an EOS found by name.
(root / "tokenizer_json/llama3_legacy.json").write_text(llama3_tokenizer(
    merges[:9], pairs=False, added=[("<|end_of_text|>", True), ("wör", False)],
    extra_model={"unk_token": "!", "fuse_unk": True}, post_processor=False))

# The Qwen2 layout (digits one by one, NFC normalizer) and Mistral-Nemo's Tekken layout, each
# followed by a NUL and a text for the target to encode: combining marks to compose and reorder,
# Hangul, case changes inside words, long digit runs.
QWEN2_SPLIT = LLAMA3_SPLIT.replace("\\p{N}{1,3}", "\\p{N}")
TEKKEN_SPLIT = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"
                "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?"
                "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
                "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
FAMILY_TEXT = ("Cafe\u0301 A\u0323\u0307 \u1100\u1161\u11a8 \uac00 \u212b Q\u0323\u031b "
               "getHTTPResponse 12345678 /path/x \u00c5ngstr\u00f6m")
(root / "tokenizer_json/qwen2_nfc.json").write_text(llama3_tokenizer(
    merges, pairs=True, added=[("<|endoftext|>", True), ("<|eot|>", True)],
    extra_model={"ignore_merges": False}, split=QWEN2_SPLIT, normalizer={"type": "NFC"},
    text=FAMILY_TEXT) + "\0" + FAMILY_TEXT)
(root / "tokenizer_json/tekken.json").write_text(llama3_tokenizer(
    merges, pairs=True, added=[("<s>", True), ("</s>", True)],
    extra_model={"ignore_merges": True}, split=TEKKEN_SPLIT, text=FAMILY_TEXT) + "\0"
    + FAMILY_TEXT)


# tokenizer.model: small SentencePiece models trained by spm_train (the sentencepiece package) on
# a few lines, one per feature the loader reads (BPE with byte fallback, unigram with a
# normalization charsmap, user-defined and control pieces, the whitespace options). Relative
# paths: the trainer stores its input and output names in the model.
SPM_TEXT = """Hello world, hello there! The quick brown fox jumps over the lazy dog.
Squeeze keeps 123 keys of 4567 tokens; done.\tTabs and  double  spaces stay.
Wörld, naïve café, 東京 and ＡＢＣ full-width letters. <|eot|> ends a turn.
"""


def spm_model(name, flags, rules=None):
    with tempfile.TemporaryDirectory() as d:
        Path(d, "text.txt").write_text(SPM_TEXT * 4)
        args = ["spm_train", "--input=text.txt", "--model_prefix=m", "--minloglevel=2",
                "--num_threads=1", "--random_seed=1", "--hard_vocab_limit=false",
                "--character_coverage=1.0"]
        if rules:
            Path(d, "rules.tsv").write_text(rules)
            args.append("--normalization_rule_tsv=rules.tsv")
        subprocess.run(args + flags, cwd=d, check=True, capture_output=True)
        (root / "tokenizer_model" / name).write_bytes(Path(d, "m.model").read_bytes())


(root / "tokenizer_model/squeeze-demo.model").unlink(missing_ok=True)
spm_model("bpe_bytes.model", ["--model_type=bpe", "--vocab_size=340", "--byte_fallback=true",
                              "--normalization_rule_name=identity", "--split_digits=true",
                              "--user_defined_symbols=<|eot|>"])
# Full-width A-C to ASCII, "ﬁ" to "fi" (a one-to-many rule): a charsmap of a few entries.
spm_model("unigram_charsmap.model",
          ["--model_type=unigram", "--vocab_size=80", "--control_symbols=<ctl>",
           "--user_defined_symbols=<|eot|>,wö", "--treat_whitespace_as_suffix=true",
           "--remove_extra_whitespaces=false"],
          rules="FF21\t41\nFF22\t42\nFF23\t43\nFB01\t66 69\n")
spm_model("bpe_plain.model", ["--model_type=bpe", "--vocab_size=60",
                              "--normalization_rule_name=identity", "--add_dummy_prefix=false",
                              "--allow_whitespace_only_pieces=true", "--split_by_whitespace=false"])


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
