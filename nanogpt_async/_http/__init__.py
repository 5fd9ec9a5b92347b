"""Step 3: a checked body to an answer over HTTP.

The connection pools (`_transport`), one exchange with capped reads and error translation
(`_exchange`), retries with backoff that honours ``Retry-After`` (`_retry`) and the redaction of
secrets from logged URLs (`_redaction`). Pacing (step 2) is asked before each attempt.
"""
