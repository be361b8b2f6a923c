"""Ollama Modelfile for a GGUF export: `ollama create crawl2model -f model-q4_k_m.Modelfile`.

    from model.ollama import modelfile, write_modelfile, render_ollama_template
    text = modelfile("model-q4_k_m.gguf", {"temperature": 0.7})
    path = write_modelfile(Path("out/gguf/model-q4_k_m.gguf"))   # out/gguf/model-q4_k_m.Modelfile

The TEMPLATE is a Go text/template over Ollama's `.Messages` that renders the prompt
model.tokenizer.render_chat renders: `<|role|>content<|end_of_turn|>` per turn, then `<|assistant|>`
(Ollama always asks for the assistant's turn). A role other than system/user/assistant gets no
role token. Ollama is not installed here and Go templates do not run in Python, so
render_ollama_template is a small evaluator of the constructs TEMPLATE uses (text, `{{- -}}`
whitespace trimming, `range .Messages`, `if/else if/else eq .Role "..."`, `.Role`, `.Content`,
`end`): the test renders TEMPLATE's own text with it and compares against render_chat.
"""

from __future__ import annotations

import re
from pathlib import Path

TEMPLATE = """{{- range .Messages }}
{{- if eq .Role "system" }}<|system|>
{{- else if eq .Role "user" }}<|user|>
{{- else if eq .Role "assistant" }}<|assistant|>
{{- end }}{{ .Content }}<|end_of_turn|>
{{- end }}<|assistant|>"""

STOPS = ("<|end_of_turn|>", "<|endoftext|>")
DEFAULT_PARAMS = {"temperature": 0.8, "top_k": 50, "top_p": 0.95, "num_ctx": 2048}


def modelfile(gguf_file_name: str, params: dict | None = None) -> str:
    """The Modelfile text for a GGUF file that lies next to it."""
    lines = [f"FROM ./{gguf_file_name}", "", f'TEMPLATE """{TEMPLATE}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in STOPS]
    lines += [f"PARAMETER {key} {value}" for key, value in {**DEFAULT_PARAMS, **(params or {})}.items()]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, params: dict | None = None) -> Path:
    """`<name>.Modelfile` beside the .gguf; num_ctx defaults to the model's trained context."""
    from model.to_gguf import read_gguf_summary

    gguf_path = Path(gguf_path)
    context = read_gguf_summary(gguf_path)["metadata"].get("llama.context_length")
    params = {**({"num_ctx": context} if context else {}), **(params or {})}
    path = gguf_path.with_name(f"{gguf_path.stem}.Modelfile")
    path.write_text(modelfile(gguf_path.name, params))
    return path


# --- a tiny evaluator of the Go-template subset TEMPLATE uses --------------------------------

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
IF = re.compile(r'(?:else )?if eq \.(\w+) "([^"]*)"$')


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], with `{{-` / `-}}` trimming applied to the neighbouring text."""
    parts, pos, trim_next = [], 0, False
    for match in ACTION.finditer(template):
        text = template[pos:match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        parts += [("text", text), ("action", match.group(2))]
        pos, trim_next = match.end(), bool(match.group(3))
    tail = template[pos:]
    return parts + [("text", tail.lstrip() if trim_next else tail)]


def _parse(parts: list, i: int = 0) -> tuple[list, int, str | None]:
    """A node list up to an `end`/`else...` action; returns (nodes, next index, the stopping action)."""
    nodes = []
    while i < len(parts):
        kind, value = parts[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value == "end" or value.startswith("else"):
            return nodes, i, value
        elif value == "range .Messages":
            body, i, stop = _parse(parts, i)
            if stop != "end":
                raise ValueError(f"range without end ({stop!r})")
            nodes.append(("range", body))
        elif IF.match(value):
            branches, stop = [], value
            while stop is not None and stop != "end":
                body, i, next_stop = _parse(parts, i)
                condition = IF.match(stop)
                if condition is None and stop != "else":
                    raise ValueError(f"unsupported branch {stop!r}")
                branches.append((condition.groups() if condition else None, body))
                stop = next_stop
            if stop is None:
                raise ValueError(f"if without end: {value!r}")
            nodes.append(("if", branches))
        elif re.fullmatch(r"\.\w+", value):
            nodes.append(("field", value[1:]))
        else:
            raise ValueError(f"unsupported template action {{{{ {value} }}}}")
    return nodes, i, None


def _execute(nodes: list, data: dict) -> str:
    out = []
    for kind, value in nodes:
        if kind == "text":
            out.append(value)
        elif kind == "field":
            out.append(str(data[value]))
        elif kind == "range":
            out += [_execute(value, message) for message in data["Messages"]]
        elif kind == "if":
            for condition, body in value:
                if condition is None or str(data[condition[0]]) == condition[1]:
                    out.append(_execute(body, data))
                    break
    return "".join(out)


def render_ollama_template(messages: list[dict], add_generation_prompt: bool = True,
                           template: str = TEMPLATE) -> str:
    """What Ollama renders `template` to for these messages ({"role", "content"} dicts, as for
    render_chat). Ollama always adds the generation prompt, so add_generation_prompt must be True."""
    if not add_generation_prompt:
        raise ValueError("Ollama's template always ends with the assistant's turn; "
                         "there is no add_generation_prompt=False in Ollama")
    nodes, _, stop = _parse(_lex(template))
    if stop is not None:
        raise ValueError(f"unexpected {{{{ {stop} }}}} at top level")
    messages = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return _execute(nodes, {"Messages": messages})
