"""An Ollama `Modelfile` for an exported GGUF: the chat template in Ollama's Go-template syntax, the
default system prompt, and the end-of-turn stop token.

The Jinja chat template is not parsed. It is *run* on probe conversations and each rendering is
compared with ChatML's (`<|im_start|>role\\ncontent<|im_end|>\\n` per message, then
`<|im_start|>assistant\\n` as the generation prompt). Only a template that renders every probe
exactly as ChatML does, optionally with a fixed system prompt put first when a conversation has
none (SmolLM2's), is translated; anything else raises GGUFError instead of writing a template that
would prompt the model differently. The Go template is the ChatML example of Ollama's own
docs/template.md; Ollama puts the Modelfile's SYSTEM first when the request has no system message
(server/routes.go), which is what such a Jinja template does with its default.
"""

from __future__ import annotations

from typing import Any

from adapterkit.errors import GGUFError

START, END = "<|im_start|>", "<|im_end|>"

OLLAMA_CHATML = (
    "{{- range .Messages }}" + START + "{{ .Role }}\n{{ .Content }}" + END + "\n{{ end }}"
    + START + "assistant\n"
)  # fmt: skip

_PROBES: tuple[tuple[tuple[tuple[str, str], ...], bool], ...] = (
    ((("system", "Be brief."), ("user", "Hi there."), ("assistant", "Hello."), ("user", "Bye?")), True),
    ((("user", "What is 2 + 2?"),), True),
    ((("user", "Name a colour."), ("assistant", "Blue.")), False),
    ((("system", "S1"), ("user", "U1")), False),
    ((("user", "  spaced, two lines \n\n"), ("assistant", " answer ")), True),  # no trimming
)  # fmt: skip


def _chatml(messages: list[tuple[str, str]], generation_prompt: bool) -> str:
    text = "".join(f"{START}{role}\n{content}{END}\n" for role, content in messages)
    return text + (f"{START}assistant\n" if generation_prompt else "")


def default_system(tokenizer: Any) -> str | None:
    """The system prompt the chat template puts first when a conversation has none (None if it
    adds none), provided the template renders every probe as ChatML; else GGUFError."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise GGUFError(
            "--ollama: the tokenizer has no chat template, so there is none to translate"
        )
    vocab = tokenizer.get_vocab()
    if START not in vocab or END not in vocab:
        raise GGUFError(f"--ollama: the vocabulary lacks {START} / {END}; not a ChatML model")
    lone = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    system: str | None = None
    head = f"{START}system\n"
    if isinstance(lone, str) and lone.startswith(head) and END in lone:
        system = lone[len(head) : lone.index(END)]
    for messages, gen in _PROBES:
        expected = list(messages)
        if system is not None and messages[0][0] != "system":
            expected = [("system", system), *expected]
        rendered = tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages],
            tokenize=False,
            add_generation_prompt=gen,
        )
        if rendered != _chatml(expected, gen):
            raise GGUFError(
                "--ollama: the chat template is not ChatML (it renders "
                f"{rendered!r}, ChatML gives {_chatml(expected, gen)!r}); adapterkit translates "
                "only ChatML templates to Ollama's syntax and writes no Modelfile it cannot vouch "
                "for. Export without --ollama and write the TEMPLATE by hand."
            )
    return system


def modelfile(gguf_name: str, tokenizer: Any) -> str:
    """The Modelfile text for `gguf_name` (a file beside it) and this tokenizer's chat template."""
    system = default_system(tokenizer)
    if '"""' in (system or ""):
        raise GGUFError(f'--ollama: the default system prompt holds """: {system!r}')
    if any(c.isspace() for c in gguf_name):
        raise GGUFError(f"--ollama: FROM cannot name a file with whitespace: {gguf_name!r}")
    lines = [
        "# Written by adapterkit export --ollama; `ollama create NAME -f Modelfile` in this folder.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{OLLAMA_CHATML}"""',
    ]
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    lines.append(f'PARAMETER stop "{END}"')
    return "\n".join(lines) + "\n"
