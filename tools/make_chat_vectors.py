#!/usr/bin/env python3
"""Chat-template reference vectors from transformers' apply_chat_template, for tests/test_tokenizer.c.

Rerun (from the repo root, with ../shared present; transformers 5.x was used):
    python3 tools/make_chat_vectors.py
It writes tests/fixtures/tokenizer/chat.jsonl, one line per (format, conversation, generation prompt):
    format   the xdistill chat format name (llama3, llama3.1, qwen3, qwen3-nothink, qwen2.5, chatml, olmo2)
    dir      the ../shared/tokenizers directory whose tokenizer.json is used
    detect   1 if the C side must recognise the format from the directory's tokenizer_config.json
             (the template is the shipped one), 0 if the test names the format explicitly
    messages [{role, content}], gen (add_generation_prompt)
    text     the rendered string, ids = apply_chat_template(..., tokenize=True) (which equals
             encode(text, add_special_tokens=False)), mask = 1 for tokens whose first character lies
             in an assistant reply: from the end of the assistant header to the end-of-turn token
             inclusive (Llama 3 <|eot_id|>, ChatML <|im_end|>, OLMo 2 eos <|endoftext|>).
Templates: Llama 3 and Qwen3 come from ../shared tokenizer_config.json. Qwen2.5-Instruct,
Llama-3.1-Instruct and OLMo-2-Instruct are not in ../shared; their published templates are reproduced below (Qwen2.5's and Llama 3.1's
tool-calling branches omitted, they do not change tool-free chats) and rendered by transformers.
"""
import json
import os

from transformers import PreTrainedTokenizerFast

SHARED = "../shared"
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer", "chat.jsonl")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
QWEN25 = ("{%- if messages[0]['role'] == 'system' %}\n"
          "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
          "{%- else %}\n"
          "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
          "{%- endif %}\n"
          "{%- for message in messages %}\n"
          "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n"
          "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
          "    {%- endif %}\n"
          "{%- endfor %}\n"
          "{%- if add_generation_prompt %}\n"
          "    {{- '<|im_start|>assistant\\n' }}\n"
          "{%- endif %}\n")
OLMO2 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
         "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
         "{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\\n'  + message['content'] + eos_token + '\\n' }}"
         "{% else %}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
         "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}")

# Llama 3.1-Instruct (tool branches omitted: they render nothing for tool-free chats)
LLAMA31 = ("{{- bos_token }}\n"
           "{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n"
           "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
           "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n"
           "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
           "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
           "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
           "{{- system_message }}\n{{- \"<|eot_id|>\" }}\n"
           "{%- for message in messages %}\n"
           "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
           "{%- endfor %}\n"
           "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n")

CONVS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Tell me a joke about llamas 🦙."},
     {"role": "assistant", "content": "Why did the llama cross the road?\nTo get to the other side.\n"}],
    [{"role": "system", "content": "  padded system  \n"}, {"role": "user", "content": "\n\nquote <|eot_id|> and <|im_end|> in text  "},
     {"role": "assistant", "content": " 你好，世界 — naïve café\n\nbye "}],
    [{"role": "user", "content": "Think first."},
     {"role": "assistant", "content": "<think>\nlet me see\n</think>\n\nThe answer is 42."},
     {"role": "user", "content": "And again?"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nStill 42."}],
]

HEADERS = {"llama3": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
           "chatml": ("<|im_start|>assistant\n", "<|im_end|>"), "olmo2": ("<|assistant|>\n", "<|endoftext|>")}


def masked_spans(text, fmt):
    head, end = HEADERS["llama3" if fmt.startswith("llama3") else "olmo2" if fmt == "olmo2" else "chatml"]
    spans, i = [], 0
    while True:
        h = text.find(head, i)
        if h < 0:
            return spans
        s = h + len(head)
        e = text.find(end, s)
        if e < 0:
            return spans  # the generation prompt: nothing to learn
        spans.append((s, e + len(end)))
        i = e + len(end)


def main():
    cases = []
    for d in ["llama3", "qwen3"]:
        with open(os.path.join(SHARED, "tokenizers", d, "tokenizer_config.json")) as f:
            cfg = json.load(f)
        cases.append((d, d, cfg["chat_template"], 1, cfg.get("bos_token"), cfg.get("eos_token"), {}))
    qwen_tmpl = cases[1][2]
    cases.append(("qwen3-nothink", "qwen3", qwen_tmpl, 0, None, "<|im_end|>", {"enable_thinking": False}))
    cases.append(("qwen2.5", "qwen3", QWEN25, 0, None, "<|im_end|>", {}))
    cases.append(("chatml", "qwen3", CHATML, 0, None, "<|im_end|>", {}))
    cases.append(("olmo2", "olmo2", OLMO2, 0, "<|endoftext|>", "<|endoftext|>", {}))
    cases.append(("llama3.1", "llama3", LLAMA31, 0, "<|begin_of_text|>", "<|eot_id|>", {}))
    n = 0
    with open(OUT, "w", encoding="utf-8") as f:
        for fmt, d, tmpl, detect, bos, eos, extra in cases:
            tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(SHARED, "tokenizers", d, "tokenizer.json"),
                                          bos_token=bos, eos_token=eos)
            for conv in CONVS:
                for gen in [False, True]:
                    text = tok.apply_chat_template(conv, chat_template=tmpl, tokenize=False, add_generation_prompt=gen, **extra)
                    ids = tok.apply_chat_template(conv, chat_template=tmpl, tokenize=True, add_generation_prompt=gen,
                                                  return_dict=False, **extra)
                    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
                    assert list(ids) == enc.ids, (fmt, conv)
                    spans = masked_spans(text, fmt)
                    mask = [int(any(s <= o[0] < e for s, e in spans)) for o in enc.offsets]
                    rec = {"format": fmt, "dir": d, "detect": detect, "messages": conv, "gen": gen, "text": text,
                           "ids": enc.ids, "mask": mask}
                    f.write(json.dumps(rec, ensure_ascii=True) + "\n")
                    n += 1
    print(f"wrote {n} chat vectors to {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
