"""The fake's storage host: signed URLs, served from a second listener (another origin).

Like S3: a signature over the file id, date and expiry; 403 ``AccessDenied`` once expired,
404 ``NoSuchKey`` once deleted, XML error bodies.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import urllib.parse
from typing import TYPE_CHECKING

from aiohttp import web

from nanogpt_async.testing._png import make_png
from nanogpt_async.testing._replies import PROXY_HTML, drop, fault_answer

if TYPE_CHECKING:
    from nanogpt_async.testing._state import FakeState, StoredFile

__all__ = ["StorageHost"]


def _s3_error(code: str, message: str, status: int) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>FAKE0000000000</RequestId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _sign(key: bytes, file_id: str, date: str, expires: str) -> str:
    return hmac.new(key, f"{file_id}\n{date}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _has_credentials(request: web.Request) -> bool:
    return "Authorization" in request.headers or "x-api-key" in request.headers


class StorageHost:
    """The download listener's handler and the signed URLs it accepts."""

    def __init__(self, fake: FakeState, api_root: str, download_root: str) -> None:
        """``api_root``: where the redirect fault points; ``download_root``: this host."""
        self.fake = fake
        self.api_root = api_root
        self.download_root = download_root

    def signed_url(self, file_id: str, record: StoredFile) -> str:
        """A URL to ``file_id`` on this host, signed until the record's URL expiry."""
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        expires = str(max(0, round(record.url_expires_at - self.fake.clock())))
        query = urllib.parse.urlencode(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Date": date,
                "X-Amz-Expires": expires,
                "X-Amz-SignedHeaders": "host",
                "X-Amz-Signature": _sign(self.fake.signing_key, file_id, date, expires),
            }
        )
        return f"{self.download_root}/files/{file_id}.png?{query}"

    async def download_file(self, request: web.Request) -> web.StreamResponse:
        """``GET /files/<id>.png?X-Amz-...``: serve a signed URL like a storage host."""
        fake = self.fake
        fake.count(
            download_requests=1, download_requests_with_credentials=int(_has_credentials(request))
        )
        fault = fake.pop_fault("download")
        if fake.download_latency > 0:
            await asyncio.sleep(fake.download_latency)

        if fault is not None:
            if fault.kind == "reset_before_response":
                fake.count(connections_reset=1)
                return drop(request)
            if fault.kind == "redirect_to_api_host":
                raise web.HTTPFound(f"{self.api_root}/capture")
            if fault.kind == "download_html":
                return web.Response(
                    text=PROXY_HTML.format(status=200, phrase="OK"), content_type="text/html"
                )
            if fault.kind == "status":
                rid = fake.next_request_id()
                faulted = await fault_answer(fake, request, rid, fault)
                fake.record_other_status(faulted.status)
                return faulted

        query = request.query
        file_id = request.match_info["file_id"]
        date, expires = query.get("X-Amz-Date", ""), query.get("X-Amz-Expires", "")
        signature = query.get("X-Amz-Signature", "")
        expected = _sign(fake.signing_key, file_id, date, expires)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return _s3_error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
                403,
            )
        record = fake.find_file(file_id)
        if record is None:
            fake.count(missing_downloads=1)
            return _s3_error("NoSuchKey", "The specified key does not exist.", 404)
        if fake.clock() >= record.url_expires_at:
            fake.count(expired_downloads=1)
            return _s3_error("AccessDenied", "Request has expired", 403)

        png = make_png(record.text, record.image_bytes)
        if fault is not None and fault.kind == "download_stall":
            response = web.StreamResponse(status=200)
            response.content_type = "image/png"
            response.content_length = len(png)
            await response.prepare(request)
            await asyncio.sleep(fault.seconds)
            await response.write(png)
            fake.count(downloads=1)
            return response
        fake.count(downloads=1)
        return web.Response(body=png, content_type="image/png")
