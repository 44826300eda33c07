"""Server-side conversation state: the context a continuation makes the model read again.

The Responses API lets a request name ``previous_response_id`` instead of resending the
conversation (OpenAI API reference, "Conversation state"): the provider bills the whole earlier
context as input again, but the request body holds only the new turn. Estimated from the body
alone, a burst of such requests reserves far less than it costs. So the meter remembers, per
response it metered, the tokens the next turn re-reads (that response's input + output), and a
continuation's estimate counts them. Bounded (least recently used goes first); a response this
process never metered (another replica, before a restart) adds nothing, and the estimate is
then the body alone, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_RESPONSES = 50_000  # about 10 MB: a day of a busy team's turns
MAX_ID_CHARS = 128


class ContextBook:
    """response id -> context tokens; written by the meter's worker, read on the event loop."""

    def __init__(self, maxsize: int = MAX_RESPONSES) -> None:
        self.maxsize = maxsize
        self._tokens: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, response_id: str | None, tokens: int) -> None:
        """Record what a continuation of `response_id` re-reads (tokens >= 0)."""
        if not response_id or tokens <= 0 or len(response_id) > MAX_ID_CHARS:
            return
        with self._lock:
            self._tokens[response_id] = tokens
            self._tokens.move_to_end(response_id)
            while len(self._tokens) > self.maxsize:
                self._tokens.popitem(last=False)

    def tokens(self, response_id: str | None) -> int:
        """Tokens a continuation of `response_id` re-reads; 0 when unknown."""
        if not response_id:
            return 0
        with self._lock:
            return self._tokens.get(response_id, 0)
