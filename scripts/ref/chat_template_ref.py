#!/usr/bin/env python3
"""Golden chat renderings for tests/test_chat_template.cpp.

    chat_template_ref.py OUT_DIR

Renders a set of conversations with the models' real Jinja templates, in the environment Hugging Face's
apply_chat_template uses (transformers' own compiled-template function when importable; otherwise an
identical jinja2 ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks, loopcontrols, HF's tojson,
raise_exception and strftime_now). Templates:
  llama3.1   $BONSAI_SHARED_DATA/chat_templates/meta-llama-Llama-3.1-8B-Instruct.jinja
  llama3.2   $BONSAI_SHARED_DATA/chat_templates/meta-llama-Llama-3.2-3B-Instruct.jinja
  llama3     Meta-Llama-3-8B-Instruct's template (the string below)
  smollm2    tokenizer.chat_template of the SmolLM2-135M-Instruct GGUF (read with the gguf package)
It also tokenizes each rendering with special tokens parsed (tiktoken with the Llama 3 ranks for the
Llama templates, llama.cpp for SmolLM2), for encode_chat.

Writes OUT_DIR/chat_golden.json:
  {"templates": {name: jinja}, "cases": [{"template", "messages", "add_generation_prompt", "date_string"?,
   "bos_token", "expected" | "error", "ids"?}]}
"""
import json
import os
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_ref import LLAMA3_PATTERN, llama3_special_tokens, smollm2_gguf  # noqa: E402

LLAMA3_0_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def compile_template(source):
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
        return _compile_jinja_template(source)
    except ImportError:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        return env.from_string(source)


def conversations():
    m = lambda role, content: {"role": role, "content": content}  # noqa: E731
    return {
        "multi_turn_with_system": [m("system", "You are a concise assistant."), m("user", "What is 2+2?"),
                                   m("assistant", "4."), m("user", "And 3+3?")],
        "no_system": [m("user", "Hello!"), m("assistant", "Hi there. How can I help?")],
        "single_user": [m("user", "Write a haiku about bonsai trees.")],
        "whitespace": [m("system", "  Be brief.\n"), m("user", "\u3000 hello \x1f\n\t"), m("assistant", " Hi!  \t\u00a0"),
                       m("user", "\n\nnext\n")],
        "unicode_and_markers": [m("user", "Say <|eot_id|> or <|im_end|> literally? 你好 🦜 e\u0301"),
                                m("assistant", "Ok: «done» ✓")],
        "tool_result": [m("user", "Weather in Paris?"), m("assistant", "Calling the tool."),
                        m("ipython", "{\"temp\": \"21°C\", \"note\": \"line1\nline2\\tq\x01\"}"), m("assistant", "21°C.")],
        "systems_in_the_middle": [m("system", "First."), m("user", "a"), m("system", "Second."), m("user", "b")],
        "empty_contents": [m("user", ""), m("assistant", "")],
        "empty_chat": [],
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    shared = Path(os.environ.get("BONSAI_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
    import gguf
    reader = gguf.GGUFReader(smollm2_gguf())
    field = reader.fields["tokenizer.chat_template"]
    templates = {
        "llama3.1": (shared / "chat_templates" / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8"),
        "llama3.2": (shared / "chat_templates" / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8"),
        "llama3": LLAMA3_0_TEMPLATE,
        "smollm2": bytes(field.parts[field.data[0]]).decode("utf-8"),
    }
    encoders = make_encoders(shared)
    cases = []
    for tname, source in templates.items():
        compiled = compile_template(source)
        bos = "<|im_start|>" if tname == "smollm2" else "<|begin_of_text|>"
        for cname, messages in conversations().items():
            for gen in (False, True):
                # 3.2 defaults to today's date: always pass one. 3.1 is rendered with and without.
                dates = {"llama3.1": [None, "05 Mar 2025"], "llama3.2": ["05 Mar 2025"]}.get(tname, [None])
                for date in dates:
                    case = {"template": tname, "conversation": cname, "messages": messages,
                            "add_generation_prompt": gen, "bos_token": bos}
                    kwargs = {} if date is None else {"date_string": date}
                    if date is not None:
                        case["date_string"] = date
                    try:
                        text = compiled.render(messages=messages, tools=None, documents=None, add_generation_prompt=gen,
                                               bos_token=bos, **kwargs)
                        case["expected"] = text
                        case["ids"] = encoders["smollm2" if tname == "smollm2" else "llama3"](text)
                    except Exception as e:  # the template itself fails (messages[0] of an empty chat)
                        case["error"] = type(e).__name__
                    cases.append(case)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chat_golden.json").write_text(json.dumps({"templates": templates, "cases": cases}, ensure_ascii=False, indent=1),
                                          encoding="utf-8")
    print(f"{len(cases)} chat renderings of {len(templates)} templates in {out / 'chat_golden.json'}")


def make_encoders(shared):
    import llama_cpp
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(str(shared / "tokenizer" / "llama3" / "tokenizer.model"))
    enc = tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(llama3_special_tokens())})
    smol = llama_cpp.Llama(model_path=smollm2_gguf(), vocab_only=True, verbose=False)
    return {"llama3": lambda s: enc.encode(s, allowed_special="all"),
            "smollm2": lambda s: smol.tokenize(s.encode("utf-8"), add_bos=False, special=True)}


if __name__ == "__main__":
    main()
