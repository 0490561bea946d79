"""proxy/stream_watch.py: a relayed stream's terminator, whatever the read boundaries."""

from __future__ import annotations

import pytest

from proxy.openai_api import CHAT, RESPONSES
from proxy.stream_watch import Terminator

CHAT_STREAM = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
RESPONSES_STREAM = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n'
)


@pytest.mark.parametrize(
    ("endpoint", "stream"), [(CHAT, CHAT_STREAM), (RESPONSES, RESPONSES_STREAM)]
)
def test_the_terminator_is_seen_at_every_read_boundary(endpoint: str, stream: bytes) -> None:
    for cut in range(len(stream) + 1):
        ends = Terminator(endpoint)
        ends.see(stream[:cut])
        ends.see(stream[cut:])
        assert ends.terminated, cut


@pytest.mark.parametrize(
    ("endpoint", "stream"), [(CHAT, CHAT_STREAM), (RESPONSES, RESPONSES_STREAM)]
)
def test_a_stream_cut_before_its_terminator_is_not_terminated(endpoint: str, stream: bytes) -> None:
    marker = stream.index(b"[DONE]" if endpoint == CHAT else b"response.completed")
    for cut in range(marker + 1):
        ends = Terminator(endpoint)
        ends.see(stream[:cut])
        assert not ends.terminated, cut
