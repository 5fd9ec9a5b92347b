"""The gallery's HTML: one static, self-contained page, every piece of user text escaped.

Prompts, ids and error messages are user text: each goes through `html.escape` (quotes
included), file names are percent-encoded before they become links, and the page's Content
Security Policy runs only its own script and style (by hash) and loads nothing from a network,
so even a mistake in escaping could not run a script or phone home.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from urllib.parse import quote

from nanogpt_async._gallery._records import Card, Picture, Totals

__all__ = ["render_page"]

_SORTS = (
    ("index-asc", "input order"),
    ("cost-desc", "cost, highest first"),
    ("cost-asc", "cost, lowest first"),
    ("time-desc", "finished, newest first"),
    ("time-asc", "finished, oldest first"),
    ("duration-desc", "slowest first"),
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(name: str) -> str:
    """A relative link to a file in the folder (``safe=""``: no scheme, no sub-path)."""
    return _e(quote(name, safe=""))


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(stamp))


def _duration(card: Card) -> float | None:
    if card.started_at is None or card.finished_at is None:
        return None
    return max(0.0, card.finished_at - card.started_at)


def _data(value: float | None) -> str:
    return "" if value is None else repr(value)


def _picture(picture: Picture, alt: str, thumbnails: str, *, has_thumbnail: bool) -> str:
    if picture.problem is not None:
        return f'<span class="none">{_e(picture.name)}: {_e(picture.problem)}</span>'
    href = _href(picture.name)
    if not has_thumbnail:
        return f'<a href="{href}"><span class="none">{_e(picture.name)}: no preview</span></a>'
    src = _e(f"{thumbnails}/{quote(picture.thumbnail, safe='')}")
    return f'<a href="{href}"><img src="{src}" alt="{alt}" loading="lazy" decoding="async"></a>'


def _pictures(card: Card, thumbnails: str, unreadable: set[str]) -> str:
    if not card.pictures:
        text = "failed: no image" if card.status != "ok" else "no image recorded"
        return f'<span class="none">{_e(text)}</span>'
    alt = _e(card.prompt)
    return "".join(
        _picture(p, alt, thumbnails, has_thumbnail=p.name not in unreadable) for p in card.pictures
    )


def _card(card: Card, thumbnails: str, unreadable: set[str]) -> str:
    duration = _duration(card)
    rows = [
        ("model", card.model),
        ("size", card.size),
        ("seed", card.seed),
        ("cost", _money(card.cost)),
        ("finished", _when(card.finished_at)),  # UTC: a folder travels between zones
        ("took", "-" if duration is None else f"{duration:.2f}s"),
        ("id", card.id),
    ]
    if card.request_id:
        rows.append(("request", card.request_id))
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    status_class = "ok" if card.status == "ok" else "failed"
    error = f'<p class="error">{_e(card.error)}</p>' if card.error else ""
    return (
        f'<article class="card {status_class}" data-status="{status_class}" '
        f'data-index="{card.index}" data-cost="{_data(card.cost)}" '
        f'data-time="{_data(card.finished_at)}" data-duration="{_data(duration)}">'
        f'<div class="pics">{_pictures(card, thumbnails, unreadable)}</div>'
        f'<div class="meta"><p class="prompt">{_e(card.prompt)}</p>'
        f'<dl><dt>status</dt><dd class="status-{status_class}">{_e(card.status)}</dd>'
        f"{details}</dl>{error}</div></article>\n"
    )


def _totals(totals: Totals) -> str:
    parts = [
        f"<span><b>{totals.items}</b> items</span>",
        f'<span class="ok"><b>{totals.ok}</b> ok</span>',
        f'<span class="failed"><b>{totals.failed}</b> failed</span>',
        f"<span>total cost <b>{_e(_money(totals.cost))}</b></span>",
    ]
    if totals.superseded_cost:
        parts.append(
            f"<span>(of which {_e(_money(totals.superseded_cost))} on earlier attempts "
            "that a later run replaced)</span>"
        )
    return "".join(parts)


def render_page(
    title: str,
    cards: Sequence[Card],
    totals: Totals,
    *,
    thumbnails: str,
    unreadable: set[str],
) -> Iterator[str]:
    """The page, in pieces (join or write them in order)."""
    style, script = _asset("page.css"), _asset("page.js")
    csp = (
        "default-src 'none'; img-src 'self' file: data:; "
        f"style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
        "base-uri 'none'; form-action 'none'"
    )
    options = "".join(f'<option value="{v}">{_e(label)}</option>' for v, label in _SORTS)
    yield (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_e(title)}</title>\n<style>{style}</style></head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1>\n"
        f'<p class="totals" id="totals">{_totals(totals)}</p>\n'
        '<div class="controls">'
        '<input id="filter" type="search" placeholder="Filter: prompt, model, id, error..." '
        'aria-label="Filter the images" autocomplete="off">'
        '<select id="status" aria-label="Status"><option value="">ok and failed</option>'
        '<option value="ok">ok only</option><option value="failed">failed only</option></select>'
        f'<select id="sort" aria-label="Sort">{options}</select>'
        f'<span id="shown" aria-live="polite">{len(cards)} shown</span></div></header>\n'
        '<main id="grid">\n'
    )
    if not cards:
        yield '<p class="empty">No items recorded in the manifest yet.</p>\n'
    for card in cards:
        yield _card(card, thumbnails, unreadable)
    yield f"</main>\n<script>{script}</script>\n</body></html>\n"
