"""One adapter per API surface: where its text lives in a request and an answer, what a
withheld answer and the filter annotations look like.

An adapter is a module with `ENDPOINT`, `PROMPT_PARAM` (the `param` of a blocked prompt's
error), and pure functions `input_pieces(body)` (raising a 400 `OpenAIError` for a body it
cannot read or must refuse), `output_pieces(body, thinking)` (the model's reasoning read
only when `thinking`), `withhold(body, choices)` and
`annotate(body, prompt_results, per_choice_results)`, each returning new values.
"""

from __future__ import annotations

from types import ModuleType

from proxy.surfaces import chat, completions, messages, responses

SURFACES: dict[str, ModuleType] = {s.ENDPOINT: s for s in (chat, completions, responses, messages)}


def surface_for(endpoint: str) -> ModuleType:
    return SURFACES[endpoint]
