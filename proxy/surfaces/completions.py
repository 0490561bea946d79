"""Legacy Completions: text in `prompt` (a string or an array of strings) and `suffix`;
answers in `choices[].text`. Token-id prompts and prompt embeddings (vLLM's
`prompt_embeds`, SGLang's `input_ids`/`input_embeds`) cannot be read without the upstream's
tokenizer or model, so a guarded route refuses them."""

from __future__ import annotations

from typing import Any

from proxy.openai_api import bad_request
from proxy.surfaces import chat
from proxy.surfaces.text import Piece, Slot, wrong_type

ENDPOINT = "/v1/completions"
PROMPT_PARAM = "prompt"
annotate = chat.annotate


UNREADABLE = ("prompt_embeds", "input_ids", "prompt_token_ids", "input_embeds")


def input_pieces(body: dict[str, Any]) -> list[Piece]:
    chat.refuse_unreadable(body, UNREADABLE)
    pieces = []
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        pieces.append(Piece("user", (Slot(("prompt",), prompt),)))
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        pieces += [Piece("user", (Slot(("prompt", i), p),)) for i, p in enumerate(prompt)]
    elif isinstance(prompt, list) and prompt and all(_token_ids(p) for p in prompt):
        raise bad_request(
            "A guarded route needs the prompt as text, not token ids.", param="prompt"
        )
    elif prompt is not None:
        raise wrong_type(("prompt",), prompt, "a string or an array of strings")
    suffix = body.get("suffix")
    if isinstance(suffix, str):
        pieces.append(Piece("user", (Slot(("suffix",), suffix),)))
    elif suffix is not None:
        raise wrong_type(("suffix",), suffix, "a string")
    return pieces


def _token_ids(value: Any) -> bool:
    return isinstance(value, int) or (
        isinstance(value, list) and all(isinstance(t, int) for t in value)
    )


def output_pieces(body: dict[str, Any], thinking: bool = False) -> list[Piece]:
    choices = body.get("choices")
    return [
        Piece("assistant", (Slot(("choices", i, "text"), c["text"]),), choice=i)
        for i, c in enumerate(choices if isinstance(choices, list) else ())
        if isinstance(c, dict) and isinstance(c.get("text"), str)
    ]


def withhold(body: dict[str, Any], choices: frozenset[int]) -> dict[str, Any]:
    if not choices:
        return body
    out = dict(body, choices=list(body["choices"]))
    for index in choices:
        choice = out["choices"][index]
        out["choices"][index] = dict(choice, text="", finish_reason="content_filter")
        if choice.get("logprobs") is not None:  # its tokens are the withheld text
            out["choices"][index]["logprobs"] = None
    return out
