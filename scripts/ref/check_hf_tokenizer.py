#!/usr/bin/env python3
"""Checks that the tokenizer files `bonsai export --format hf` wrote make transformers tokenize exactly
as bonsai does.

    check_hf_tokenizer.py EXPORT_DIR [--bonsai BIN] [--source SPEC] [--texts DIR] [--lines 500]

SPEC is the tokenizer bonsai's side uses (default: the checkpoint the export came from, read from the
`bonsai.source` metadata of its safetensors; e.g. the SmolLM2 GGUF). BIN defaults to $BONSAI_BIN, then
build/bonsai. Checks, each against the real bonsai binary:
  1. encode: AutoTokenizer.from_pretrained(EXPORT_DIR) on the first N lines of every file in
     $BONSAI_SHARED_DATA/tokenizer/texts gives `bonsai data tokenize -t SPEC`'s ids (special tokens
     parsed, no BOS), and with add_special_tokens=True the same ids behind BOS exactly when the
     tokenizer adds one; `bonsai data tokenize -t EXPORT_DIR` (bonsai reading the export) agrees too;
     the same for tokenizer_ref.py's seeded random Unicode strings (every script, whitespace kind,
     digits, contractions, emoji, special-token strings), except those containing a byte the
     vocabulary has no token for (SmolLM2 lacks 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2):
     bonsai drops such a byte as llama.cpp does, keeping its neighbours apart, while HF's BPE drops
     it and merges across it (counted, not compared);
  2. chat, when the tokenizer has a template: apply_chat_template on 2-turn conversations (with and
     without a system message) renders the text bonsai renders (`bonsai data pack --kind sft`,
     decoded by bonsai) and gives its ids.
Exits 1 on any mismatch (the first few are printed), 0 when everything matches, 77 (skipped) when the
shared texts are absent.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."},
     {"role": "user", "content": "And of Germany? Answer in one word."},
     {"role": "assistant", "content": "Berlin."}],
    [{"role": "system", "content": "You are a terse geography tutor."},
     {"role": "user", "content": "Name a river in Egypt.\n"},
     {"role": "assistant", "content": " The Nile "},
     {"role": "user", "content": "How long is it? 😀"},
     {"role": "assistant", "content": "About 6,650 km (4,130 mi)."}],
]


def export_source(export_dir: Path) -> str:
    """The `bonsai.source` safetensors metadata bonsai export records (the first shard's)."""
    st = export_dir / "model.safetensors"
    if not st.exists():
        index = json.loads((export_dir / "model.safetensors.index.json").read_text())
        st = export_dir / sorted(set(index["weight_map"].values()))[0]
    with open(st, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    source = header.get("__metadata__", {}).get("bonsai.source")
    if not source:
        sys.exit(f"{st} has no bonsai.source metadata: give --source")
    return source


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, **kw)
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr.decode(errors='replace')}")
    return p.stdout


def bonsai_encode(bonsai, spec, lines, tmp):
    path = Path(tmp) / "lines.txt"
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    out = run([bonsai, "data", "tokenize", "-t", spec, "--file", str(path)]).decode()
    rows = out.split("\n")[:-1]
    if len(rows) != len(lines):
        sys.exit(f"bonsai data tokenize gave {len(rows)} lines for {len(lines)} inputs")
    return [[int(x) for x in r.split()] for r in rows]


class Report:
    def __init__(self):
        self.checks = 0
        self.failures = []

    def expect(self, ok, what):
        self.checks += 1
        if not ok:
            self.failures.append(what)


def check_texts(tok, bonsai, source, export_dir, texts_dir, n_lines, tmp, rep):
    bos = tok.bos_token_id
    add_bos = bool(getattr(tok, "add_bos_token", False))
    for f in sorted(texts_dir.iterdir()):
        lines = f.read_bytes().decode("utf-8").split("\n")[:n_lines]
        ours = bonsai_encode(bonsai, source, lines, tmp)
        ours_export = bonsai_encode(bonsai, str(export_dir), lines, tmp)
        plain = tok(lines, add_special_tokens=False)["input_ids"]
        special = tok(lines, add_special_tokens=True)["input_ids"]
        bad = 0
        for i, line in enumerate(lines):
            want_special = ([bos] if add_bos else []) + ours[i]
            for ok, what in ((plain[i] == ours[i], "transformers"), (special[i] == want_special, "transformers+specials"),
                             (ours_export[i] == ours[i], "bonsai on the export")):
                rep.expect(ok, f"{f.name} line {i + 1} ({what}): {line[:60]!r}")
                bad += not ok
        print(f"{f.name}: {len(lines)} lines, {sum(map(len, ours))} tokens, {bad} mismatches")


def byte_level_char(b):
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
    for U+0100 onwards, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    if b in printable:
        return chr(b)
    return chr(256 + sorted(set(range(256)) - set(printable)).index(b))


def missing_bytes(tok):
    """Bytes whose byte-level character is not a token of the vocabulary."""
    vocab = tok.get_vocab()
    return {b for b in range(256) if byte_level_char(b) not in vocab}


def check_random(tok, bonsai, source, tmp, rep):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tokenizer_ref import random_strings
    missing = missing_bytes(tok)
    texts = [t for t in random_strings() if "\n" not in t]  # bonsai data tokenize reads lines
    kept = [t for t in texts if not missing.intersection(t.encode("utf-8"))]
    ours = bonsai_encode(bonsai, source, kept, tmp)
    theirs = tok(kept, add_special_tokens=False)["input_ids"]
    bad = 0
    for i, t in enumerate(kept):
        rep.expect(ours[i] == theirs[i], f"random string {i}: {t[:60]!r}\n  bonsai:       {ours[i]}\n  transformers: {theirs[i]}")
        bad += ours[i] != theirs[i]
    print(f"random strings: {len(kept)} compared, {bad} mismatches; {len(texts) - len(kept)} not compared "
          f"(they contain a byte without a token: {sorted(missing)})")


def bonsai_chat(bonsai, source, conv, tmp):
    """bonsai's rendering of one conversation: packed as SFT, read back, decoded by bonsai."""
    import h5py
    src = Path(tmp) / "chat.jsonl"
    src.write_text(json.dumps({"messages": conv}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = Path(tmp) / "chat_pack"
    run([bonsai, "data", "pack", "-t", source, "-o", str(out), "--kind", "sft", "-i", str(src), "-f", "messages",
         "--threads", "1", "--overwrite"])
    with h5py.File(out / "shard-00000.h5", "r") as h:
        ids = [int(x) for x in h["tokens"][()]]
    ids_file = Path(tmp) / "chat_ids.txt"
    ids_file.write_text(" ".join(map(str, ids)) + "\n")
    text = run([bonsai, "data", "tokenize", "-t", source, "--decode", "--file", str(ids_file)]).decode("utf-8")
    return ids, text[:-1]  # one output line per input line


def check_chat(tok, bonsai, source, tmp, rep):
    if not getattr(tok, "chat_template", None):
        print("chat: the tokenizer has no chat template, not checked")
        return
    for k, conv in enumerate(CONVERSATIONS):
        ids, text = bonsai_chat(bonsai, source, conv, tmp)
        hf_text = tok.apply_chat_template(conv, tokenize=False)
        hf_ids = tok.apply_chat_template(conv, tokenize=True)
        if hasattr(hf_ids, "keys"):  # transformers 5 returns a BatchEncoding
            hf_ids = hf_ids["input_ids"]
        rep.expect(hf_text == text, f"chat {k}: rendering differs\n  transformers: {hf_text!r}\n  bonsai:       {text!r}")
        rep.expect(list(hf_ids) == ids, f"chat {k}: ids differ\n  transformers: {list(hf_ids)}\n  bonsai:       {ids}")
        print(f"chat {k}: {len(ids)} tokens, rendering {'equal' if hf_text == text else 'DIFFERENT'}, "
              f"ids {'equal' if list(hf_ids) == ids else 'DIFFERENT'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--bonsai", default=os.environ.get("BONSAI_BIN", str(ROOT / "build" / "bonsai")))
    ap.add_argument("--source", help="bonsai's tokenizer (default: the export's bonsai.source)")
    shared = Path(os.environ.get("BONSAI_SHARED_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--texts", type=Path, default=shared / "tokenizer" / "texts")
    ap.add_argument("--lines", type=int, default=500)
    a = ap.parse_args()
    if not a.texts.is_dir():  # CTest: SKIP_RETURN_CODE 77
        print(f"skipped: no texts at {a.texts} (set BONSAI_SHARED_DATA or give --texts)")
        sys.exit(77)
    from transformers import AutoTokenizer
    source = a.source or export_source(a.export_dir)
    tok = AutoTokenizer.from_pretrained(str(a.export_dir))
    print(f"transformers {type(tok).__name__} from {a.export_dir}; bonsai tokenizer {source}")
    rep = Report()
    with tempfile.TemporaryDirectory() as tmp:
        check_texts(tok, a.bonsai, source, a.export_dir, a.texts, a.lines, tmp, rep)
        check_random(tok, a.bonsai, source, tmp, rep)
        check_chat(tok, a.bonsai, source, tmp, rep)
    for what in rep.failures[:10]:
        print("MISMATCH", what)
    print(f"{rep.checks - len(rep.failures)}/{rep.checks} checks passed")
    sys.exit(1 if rep.failures else 0)


if __name__ == "__main__":
    main()
