"""Synthetic prompts of roughly N tokens.

Common short English words are one token each in the usual BPE vocabularies (with their leading space),
so N words make roughly N tokens. Each prompt starts at a different place in the word cycle and carries
its request number, so prefix caching cannot make a load test cheaper than real traffic.
"""

from __future__ import annotations

WORDS = ("the time people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work number night "
         "point home water room mother area money story fact month lot right study book eye job word "
         "business issue side kind head house service friend father power hour game line end member law "
         "car city community name president team minute idea kid body information back parent face").split()


def synth_prompt(n_tokens: int, request_id: int) -> str:
    """A prompt of roughly ``n_tokens`` tokens, distinct per ``request_id``."""
    head = f"{request_id}:"
    n = max(0, n_tokens - 2)  # the id and colon take about two tokens
    k = len(WORDS)
    start = (request_id * 7919) % k
    return head + "".join(" " + WORDS[(start + i) % k] for i in range(n))
