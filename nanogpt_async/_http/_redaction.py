"""Keep the key out of the HTTP libraries' own log lines.

httpx logs every response at INFO (``HTTP Request: POST ... "HTTP/1.1 400 <reason phrase>"``)
and httpcore traces at DEBUG (response headers, protocol errors quoting the status line). Both
repeat what the server sent: a server echoing the key in a reason phrase or a status line would
get it into the application's logs. A filter on those loggers redacts every key a client was
built with. It costs nothing unless a record is emitted (the libraries check the level first).
"""

from __future__ import annotations

import logging

from nanogpt_async._errors import redact

__all__ = ["guard_library_logs"]

#: Loggers whose records repeat server-provided text. Filters on a logger do not apply to its
#: children's records, so each one is named.
_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.connection_pool",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "aiohttp.client",
    "aiohttp.internal",
)


class _RedactSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = redact(text, self.secrets)
        if clean != text:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactSecrets()


def guard_library_logs(secret: str) -> None:
    """Redact ``secret`` from the HTTP libraries' log records from now on (idempotent)."""
    if secret not in _FILTER.secrets:
        _FILTER.secrets = (*_FILTER.secrets, secret)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
