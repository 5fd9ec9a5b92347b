"""Stopping a batch early when its first items all fail alike: the input is wrong, not the items.

A mistyped model answers 404 for every item, an unsupported size 400: sending the rest of a
batch only to collect the same error thousands of times helps nobody. The rule, deliberately
narrow so that a few bad prompts never stop a good batch:

* only while **no item has succeeded** in this run (once one has, the batch as a whole works
  and a failure belongs to its item);
* only **non-transient API errors**: a 4xx answer other than 408 and 429 (retried), 401, 402
  and 403 (already fatal at the first), 409 and 413 (about one item's input), and not a
  content-policy refusal (about one prompt);
* the batch stops once ``STREAK`` items in a row have failed with the **same** error class,
  HTTP status and error ``code``. A different non-transient error starts a new streak;
  transient failures (5xx after retries, connection errors, downloads) neither count nor break
  one.
"""

from __future__ import annotations

from nanogpt_async._errors import APIStatusError, ContentPolicyViolationError, NanoGPTError

__all__ = ["STREAK", "ErrorStreak"]

#: Items in a row failing alike, with no success yet, that stop the batch.
STREAK = 10
#: 4xx answers that are about one item (or retried), never a sign the whole input is wrong.
_PER_ITEM_STATUSES = frozenset({401, 402, 403, 408, 409, 413, 429})
#: 4xx: what the request itself got wrong.
_CLIENT_ERRORS = range(400, 500)

Signature = tuple[str, int, str | None]


def signature(error: NanoGPTError | None) -> Signature | None:
    """What makes two failures "the same": class, status and code; ``None`` if it cannot count."""
    if not isinstance(error, APIStatusError) or isinstance(error, ContentPolicyViolationError):
        return None
    status = error.status_code
    if not _CLIENT_ERRORS.start <= status < _CLIENT_ERRORS.stop or status in _PER_ITEM_STATUSES:
        return None
    code = getattr(error, "code", None)
    return type(error).__name__, status, code if isinstance(code, str) else None


class ErrorStreak:
    """Watches generations end; says when the same non-transient error has ended too many."""

    def __init__(self, limit: int = STREAK) -> None:
        """Stop after ``limit`` alike failures in a row (with no success before them)."""
        self.limit = limit
        self.succeeded = False
        self.count = 0
        self._signature: Signature | None = None

    def observe(self, error: NanoGPTError | None) -> bool:
        """Count one generation's outcome (``None``: it answered); ``True``: stop the batch now.

        Called as each generation ends, before its answer is saved, so the batch stops with at
        most the requests already in flight sent after the streak.
        """
        if error is None:
            self.succeeded = True
        if self.succeeded:
            return False
        current = signature(error)
        if current is None:
            return False
        if current == self._signature:
            self.count += 1
        else:
            self._signature, self.count = current, 1
        return self.count >= self.limit

    def describe(self) -> str:
        """The stop reason, for the summary."""
        kind, status, code = self._signature or ("?", 0, None)
        return (
            f"the first {self.count} items all failed with the same error ({kind}, HTTP {status}"
            + (f", code {code!r}" if code else "")
            + "), so the rest were not sent: fix the input (model, size...) and run again"
        )
