"""The commands: generate, edit, batch, gallery, models, balance, fake-server, demo."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import click

from nanogpt_async._batch._budget import DEFAULT_MODEL
from nanogpt_async._batch._fence import DEFAULT_LEASE
from nanogpt_async._batch._manifest import FileEntry, write_images
from nanogpt_async._batch._names import slugify
from nanogpt_async._batch._shards import SHARD_COUNT_ENV, resolve_shard
from nanogpt_async._cli._common import (
    EXIT_BUDGET,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    configure,
    make_client,
    output,
    run_async,
)
from nanogpt_async._cli._startup import collector_paused, import_batch_stack
from nanogpt_async._errors import ImageError, ShardError
from nanogpt_async._sniff import checked_image
from nanogpt_async._version import package_version

__all__ = ["cli"]

if TYPE_CHECKING:
    from nanogpt_async import AsyncNanoGPT, ImagesResponse

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")

_EXIT_CODES_HELP = (
    f"Exit codes: {EXIT_OK} all ok; {EXIT_FAILED} some requests or items failed; "
    f"{EXIT_USAGE} bad usage or input; {EXIT_FATAL} fatal for the account (bad key, no "
    f"balance, not permitted, daily cap); {EXIT_BUDGET} --max-cost reached before every item "
    f"ran; {EXIT_BUSY} the output folder is in use by another run; {EXIT_INTERRUPTED} "
    "interrupted (Ctrl-C; 143 SIGTERM, 129 SIGHUP)."
)


def api_options(func: _F) -> _F:
    """``--api-key``, ``--base-url``, ``--timeout``, ``--max-retries`` for commands that call."""
    options = [
        click.option(
            "--api-key",
            envvar="NANOGPT_API_KEY",
            show_envvar=True,
            metavar="KEY",
            help="NanoGPT API key (never printed).",
        ),
        click.option(
            "--base-url",
            envvar="NANOGPT_BASE_URL",
            show_envvar=True,
            metavar="URL",
            help="API base URL [default: https://nano-gpt.com/api/v1].",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            help="Per-request timeout [default: 300, generation is slow].",
        ),
        click.option(
            "--max-retries",
            type=click.IntRange(min=0),
            metavar="N",
            help="Retries after the first attempt of each request [default: 2].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def retry_ambiguous_option(func: _F) -> _F:
    """``--retry-ambiguous``: retry paid requests that may have been charged (money risk)."""
    return click.option(
        "--retry-ambiguous",
        is_flag=True,
        help=(
            "Also retry a generation that may already have reached NanoGPT (a read timeout, a "
            "connection reset after sending, a gateway's 502/504 page): it may be CHARGED "
            "TWICE. Off by default."
        ),
    )(func)


def _apply(options: Sequence[Callable[[_F], _F]], func: _F) -> _F:
    for option in reversed(options):
        func = option(func)
    return func


def request_options(func: _F) -> _F:
    """The request fields every image call takes: model, size, n, response format."""
    return _apply(_REQUEST_OPTIONS, func)


def generation_options(func: _F) -> _F:
    """The request fields shared by ``generate`` and ``batch`` (defaults for every item)."""
    return _apply([*_REQUEST_OPTIONS, *_GENERATION_ONLY_OPTIONS], func)


_REQUEST_OPTIONS: Sequence[Callable[[Any], Any]] = [
    click.option("-m", "--model", help="Model id (see `nanogpt-async models`).", metavar="ID"),
    click.option("-s", "--size", help="Size such as 1024x1024 or auto (model-specific)."),
    click.option(
        "-n", "--n", "n", type=click.IntRange(min=1), help="Images per request [default: 1]."
    ),
    click.option(
        "-f",
        "--response-format",
        type=click.Choice(["b64_json", "url"]),
        help="How NanoGPT returns images; both end up as files [default: b64_json].",
    ),
]
_GENERATION_ONLY_OPTIONS: Sequence[Callable[[Any], Any]] = [
    click.option("--seed", type=int, help="Seed, where the model supports one."),
    click.option(
        "--steps",
        "num_inference_steps",
        type=click.IntRange(1, 100),
        help="Denoising steps (1-100).",
    ),
    click.option(
        "--guidance-scale",
        type=click.FloatRange(0, 20),
        help="How closely to follow the prompt (0-20).",
    ),
]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EXIT_CODES_HELP,
)
@click.version_option(package_version(), "-V", "--version", prog_name="nanogpt-async")
@click.option("-v", "--verbose", is_flag=True, help="Log retries and show tracebacks of bugs.")
@click.pass_context
def cli(ctx: click.Context, *, verbose: bool) -> None:
    """Generate images with NanoGPT: one, or millions from a file, at the account's rate limit.

    Try it without a key or network: nanogpt-async demo
    """
    ctx.obj = {"verbose": verbose}
    configure(verbose=verbose)


def _verbose() -> bool:
    ctx = click.get_current_context()
    return bool((ctx.find_root().obj or {}).get("verbose"))


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None and v != ()}


# -- generate and edit ------------------------------------------------------------------------

_OUT_OPTION = click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="Folder to save into (created if missing).",
)
_NAME_OPTION = click.option(
    "--name",
    metavar="STEM",
    help="File name stem [default: a slug of the prompt]: STEM.png, or STEM-0.png, "
    "STEM-1.png... for several images; a taken name gets -v2, -v3... (never overwritten).",
)
_INPUT_IMAGE = click.Path(exists=True, dir_okay=False, path_type=Path)
_JSON_OPTION = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per saved image on stdout (path, sha256, cost, request id...) "
    "instead of its path.",
)


@cli.command(epilog=_EXIT_CODES_HELP)
@click.argument("prompt")
@generation_options
@_OUT_OPTION
@_NAME_OPTION
@_JSON_OPTION
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Input image for image-to-image (PNG/JPEG/WebP/GIF, 4 MB max); repeat for several.",
)
@click.option(
    "--mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inpainting mask, white where to edit.",
)
@click.option("--strength", type=click.FloatRange(0, 1), help="Image-to-image strength (0-1).")
@click.option(
    "--kontext-max-mode", is_flag=True, default=None, help="flux-kontext's enhanced context."
)
@click.option("--user", metavar="ID", help="Your end user's id, passed to NanoGPT.")
@retry_ambiguous_option
@api_options
def generate(
    prompt: str,
    *,
    out: Path,
    name: str | None,
    as_json: bool,
    images: tuple[Path, ...],
    mask: Path | None,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    max_retries: int | None,
    retry_ambiguous: bool,
    **fields: Any,
) -> None:
    """Generate images for PROMPT, save them, print their paths, the cost and the balance.

    \b
    Examples:
      nanogpt-async generate "a lighthouse at dusk" -n 2 -o out/
      nanogpt-async generate "as a watercolour" --image photo.jpg --strength 0.6
    """
    request = _drop_none(prompt=prompt, **fields)
    if len(images) == 1:
        request["image"] = images[0]
    elif images:
        request["images"] = list(images)
    if mask is not None:
        request["mask"] = mask
    client = make_client(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
        retry_ambiguous=retry_ambiguous,
    )
    _call_and_save(
        client,
        lambda c: c.images.generate(**request),
        _SaveSettings(out=out, name=name, as_json=as_json, operation="generate", request=request),
    )


@dataclass(frozen=True)
class _SaveSettings:
    """Where and how `generate` and `edit` save and report their images."""

    out: Path
    name: str | None
    as_json: bool
    operation: str
    request: Mapping[str, Any]


def _file_name(stem: str, index: int, data: bytes, *, many: bool) -> str:
    """``stem.png`` for a lone image, ``stem-0.png``, ``stem-1.png``... for several.

    Numbered from 0 like the library (``image.index``, ``save_all``) and ``batch``. The
    extension comes from the bytes.
    """
    extension = checked_image(data, f"image {index}").extension
    return f"{stem}-{index}{extension}" if many else stem + extension


def _json_line(
    settings: _SaveSettings, response: ImagesResponse, index: int, entry: FileEntry
) -> str:
    """One saved image as a JSON object, for scripts (``--json``)."""
    count = len(response.data)
    request = settings.request
    return json.dumps(
        {
            "path": str(settings.out / entry.path),
            "index": index,
            "sha256": entry.sha256,
            "bytes": entry.bytes,
            # NanoGPT prices per image: each image's share, so summing the lines adds up.
            "cost": None if response.cost is None else response.cost / count,
            "request_cost": response.cost,
            "request_id": response.request_id,
            "remaining_balance": response.remaining_balance,
            "operation": settings.operation,
            "model": request.get("model", DEFAULT_MODEL),
            "size": request.get("size"),
            "seed": request.get("seed"),
            "prompt": request.get("prompt"),
        }
    )


def _call_and_save(
    client: AsyncNanoGPT,
    call: Callable[[AsyncNanoGPT], Awaitable[ImagesResponse]],
    settings: _SaveSettings,
) -> None:
    """Run one paid call, save its images into ``out``, print their paths, cost and balance.

    Files are written like a batch's (`write_images`): a name already taken, by an earlier
    run's image or anything else, is never replaced; the next free ``-v2``, ``-v3``... is used.
    """
    out = settings.out
    prompt = str(settings.request.get("prompt", ""))
    stem = slugify(settings.name, max_length=200) if settings.name else slugify(prompt, 48)

    async def main() -> None:
        failures: list[ImageError] = []
        async with client:
            response = await call(client)
            await anyio.Path(out).mkdir(parents=True, exist_ok=True)
            many = len(response.data) > 1
            # One at a time, each printed once written; an image that cannot be read (bad
            # data, an expired URL) does not cost the others, which are paid for too.
            for image in response.data:
                try:
                    data = await image.read()
                except ImageError as exc:
                    failures.append(exc)
                    continue
                name = _file_name(stem, image.index, data, many=many)
                (entry,) = await anyio.to_thread.run_sync(write_images, out, [(name, data)])
                if settings.as_json:
                    output.out(_json_line(settings, response, image.index, entry))
                else:
                    output.out(str(out / entry.path))
        parts = []
        if response.cost is not None:
            parts.append(f"cost ${response.cost:.4f}")
        if response.remaining_balance is not None:
            parts.append(f"balance ${response.remaining_balance:.4f}")
        if response.request_id:
            parts.append(f"request id {response.request_id}")
        if parts:
            output.err(", ".join(parts))
        if failures:
            raise failures[0]

    run_async(main, verbose=_verbose())


@cli.command(epilog=_EXIT_CODES_HELP)
@click.argument("image", type=_INPUT_IMAGE)
@click.argument("prompt")
@click.option(
    "--mask",
    type=_INPUT_IMAGE,
    help="Mask, white where to edit (inpainting models such as flux-lora/inpainting need one).",
)
@click.option(
    "--image",
    "more_images",
    multiple=True,
    type=_INPUT_IMAGE,
    help="Another input image, for models that take several; repeat as needed.",
)
@request_options
@_OUT_OPTION
@_NAME_OPTION
@_JSON_OPTION
@click.option("--user", metavar="ID", help="Your end user's id, passed to NanoGPT.")
@retry_ambiguous_option
@api_options
def edit(
    image: Path,
    prompt: str,
    *,
    mask: Path | None,
    more_images: tuple[Path, ...],
    out: Path,
    name: str | None,
    as_json: bool,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    max_retries: int | None,
    retry_ambiguous: bool,
    **fields: Any,
) -> None:
    """Edit IMAGE as PROMPT says (POST /images/edits), save the results, print their paths.

    IMAGE is a PNG, JPEG, WebP or GIF file of at most 4 MB as a data URL (about 3 MB of
    image). Prints the cost and the balance on stderr, like generate.

    \b
    Examples:
      nanogpt-async edit street.jpg "make it snow" -m flux-kontext -o out/
      nanogpt-async edit room.png "a red sofa" --mask sofa-mask.png -m flux-lora/inpainting
    """
    request = _drop_none(prompt=prompt, mask=mask, **fields)
    if more_images:
        request["images"] = [image, *more_images]
    else:
        request["image"] = image
    client = make_client(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
        retry_ambiguous=retry_ambiguous,
    )
    _call_and_save(
        client,
        lambda c: c.images.edit(**request),
        _SaveSettings(out=out, name=name, as_json=as_json, operation="edit", request=request),
    )


# -- models and balance -----------------------------------------------------------------------


def _size_key(size: str) -> str:
    return size.replace("*", "x")


def _capabilities(model: Any) -> str:
    caps = model.capabilities
    names = [
        ("text-to-image", caps.image_generation),
        ("image-to-image", caps.image_to_image),
        ("inpainting", caps.inpainting),
        ("nsfw", caps.nsfw),
    ]
    return ", ".join(name for name, on in names if on) or "-"


def _call(client: AsyncNanoGPT, call: Callable[[AsyncNanoGPT], Awaitable[_T]]) -> _T:
    """One API call with the client open; errors become one line and the exit code."""

    async def main() -> _T:
        async with client:
            return await call(client)

    return run_async(main, verbose=_verbose())


def _prices(model: Any) -> str:
    if not model.pricing:
        return "-"
    return ", ".join(f"{_size_key(k)} ${v:g}" for k, v in model.pricing.items())


@cli.command(epilog=_EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
@api_options
def models(
    *,
    as_json: bool,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    max_retries: int | None,
) -> None:
    """List the image models: id, price per size (USD per image), capabilities."""
    client = make_client(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
    )
    catalogue = _call(client, lambda c: c.images.models())
    if as_json:
        output.out(
            json.dumps(
                [
                    {
                        "id": m.id,
                        "name": m.name,
                        "pricing": {_size_key(k): v for k, v in m.pricing.items()},
                        "currency": m.currency,
                        "capabilities": {
                            "image_generation": m.capabilities.image_generation,
                            "image_to_image": m.capabilities.image_to_image,
                            "inpainting": m.capabilities.inpainting,
                            "nsfw": m.capabilities.nsfw,
                        },
                        "resolutions": list(m.resolutions),
                        "max_images": m.max_images,
                    }
                    for m in catalogue
                ],
                indent=2,
            )
        )
        return
    rows = [
        (m.id, m.name or "", _prices(m), _capabilities(m), str(m.max_images or "-"))
        for m in catalogue
    ]
    headers = ("id", "name", "USD per image", "capabilities", "max n")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*headers, title=f"{len(rows)} image models")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    # Not a terminal: tab-separated, one model per line, easy to grep/cut.
    output.out("\t".join(headers))
    for row in rows:
        output.out("\t".join(row))


@cli.command(epilog=_EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the balance as JSON.")
@api_options
def balance(
    *,
    as_json: bool,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    max_retries: int | None,
) -> None:
    """Show the account balance (USD and Nano)."""
    client = make_client(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
    )
    result = _call(client, lambda c: c.balance())

    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    if as_json:
        output.out(
            json.dumps(
                {"usd_balance": text(result.usd_balance), "nano_balance": text(result.nano_balance)}
            )
        )
        return
    output.out(f"USD  {text(result.usd_balance) or '-'}")
    output.out(f"XNO  {text(result.nano_balance) or '-'}")


# -- batch ------------------------------------------------------------------------------------


def progress_options(func: _F) -> _F:
    """How progress is shown."""
    options = [
        click.option(
            "--progress",
            type=click.Choice(["auto", "bar", "plain", "none"]),
            default="auto",
            show_default=True,
            help="auto: a live bar on a terminal, plain periodic lines otherwise.",
        ),
        click.option(
            "--progress-interval",
            type=click.FloatRange(min=0),
            default=2.0,
            show_default=True,
            metavar="SECONDS",
            help="Seconds between plain progress lines.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command(epilog=_EXIT_CODES_HELP)
@click.argument("prompts", metavar="PROMPTS", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: images plus manifest.jsonl. Re-running into it resumes.",
)
@click.option(
    "--format",
    "prompt_format",
    type=click.Choice(["auto", "text", "jsonl", "csv"]),
    default="auto",
    show_default=True,
    help="Prompt file format; auto goes by extension, then by the first line.",
)
@generation_options
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Requests in flight at most.",
)
@click.option(
    "--rps",
    type=click.FloatRange(min=0, min_open=True),
    default=25.0,
    show_default=True,
    help="Requests per second at most, retries included (NanoGPT allows 25 per key).",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Stop the batch when the next turn is further away (e.g. a long 429 cooldown).",
)
@click.option(
    "--limits-url",
    envvar="NANOGPT_LIMITS_URL",
    show_envvar=True,
    metavar="URL",
    help="redis://host:port/db: share the key's pacing with every process using it.",
)
@click.option(
    "--download-concurrency",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Signed-URL downloads in flight at most.",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    metavar="USD",
    help="Stop starting requests once this much is spent or in flight.",
)
@click.option(
    "--shared-budget",
    metavar="NAME",
    help="Make --max-cost one cap, kept in Redis (--limits-url) under NAME, for every batch "
    "using NAME with this key, in any process.",
)
@click.option(
    "--retry-failed/--no-retry-failed",
    default=True,
    show_default=True,
    help="On resume, run again the items that failed last time.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check models and sizes against the image-models list and print the estimated "
    "cost; send no paid request (exit 2 if the input has problems).",
)
@click.option(
    "--shard",
    metavar="I/N|auto",
    help="Do only shard I of N (items whose line index, from 0, is I modulo N) into "
    "OUT/manifest.shard-IIII-of-NNNN.jsonl; shards may share OUT. 'auto' reads "
    "JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID. With --limits-url "
    "each item is claimed in Redis first, so none is paid twice. See the shards guide.",
)
@click.option(
    "--shard-count",
    type=click.IntRange(min=1),
    envvar=SHARD_COUNT_ENV,
    show_envvar=True,
    metavar="N",
    help="The number of shards, for --shard auto on Kubernetes (the Job's completions).",
)
@click.option(
    "--job-id",
    envvar="NANOGPT_JOB_ID",
    show_envvar=True,
    metavar="ID",
    help="Names the job in Redis's at-most-once fence [default: OUT's absolute path]; give "
    "every shard the same one when they write to different folders.",
)
@click.option(
    "--fence-lease",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_LEASE,
    envvar="NANOGPT_FENCE_LEASE",
    hidden=True,
    help="Seconds a killed process's claims stay its own (for tests).",
)
@retry_ambiguous_option
@progress_options
@click.option(
    "--gallery/--no-gallery",
    default=True,
    show_default=True,
    help="At the end, write or refresh OUT/index.html (see `nanogpt-async gallery`).",
)
@api_options
def batch(
    prompts: str,
    *,
    out: Path,
    prompt_format: str,
    concurrency: int,
    rps: float,
    max_wait: float,
    limits_url: str | None,
    download_concurrency: int,
    max_cost: float | None,
    shared_budget: str | None,
    shard: str | None,
    shard_count: int | None,
    job_id: str | None,
    fence_lease: float,
    retry_failed: bool,
    dry_run: bool,
    progress: str,
    progress_interval: float,
    gallery: bool,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    max_retries: int | None,
    retry_ambiguous: bool,
    **fields: Any,
) -> None:
    """Generate an image set for every prompt in PROMPTS into a folder, with a manifest.

    PROMPTS is a text file (one prompt per line; "#" lines are comments), JSONL (one request
    object per line: "prompt", optional "id", any API field) or CSV (a "prompt" column; optional
    "id", "model", "size", "n", "seed", ...); "-" reads standard input. Options give defaults
    that each line's own fields override. Finished items go to OUT/manifest.jsonl; running the
    same command again skips them. One run per OUT at a time (a second one exits 75). Ctrl-C,
    SIGTERM or SIGHUP stop starting items and save the ones in flight; a second one aborts.

    \b
    Examples:
      nanogpt-async batch prompts.txt -o out/ --model flux-schnell --max-cost 5
      cat prompts.jsonl | nanogpt-async batch - -o out/ -f url
    """
    with collector_paused():  # a batch's modules and its HTTP stack: see _startup
        from nanogpt_async._cli._batchrun import (
            BatchSettings,
            prompt_items,
            run_batch,
        )

        import_batch_stack()
    chosen = None
    if shard is not None:
        try:
            chosen = resolve_shard(shard, os.environ, shard_count)
        except ShardError as exc:
            raise click.BadParameter(str(exc), param_hint="--shard") from None
    items = prompt_items(prompts, prompt_format)
    client = make_client(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
        max_connections=max(concurrency, download_concurrency),
        retry_ambiguous=retry_ambiguous,
        rps=rps,
        max_wait=max_wait,
        limits_url=limits_url,
    )
    settings = BatchSettings(
        out=out,
        concurrency=concurrency,
        download_concurrency=download_concurrency,
        max_cost=max_cost,
        shared_budget=shared_budget,
        retry_failed=retry_failed,
        progress=progress,
        progress_interval=progress_interval,
        defaults=_drop_none(**fields),
        # One shard's gallery would show a slice: `merge` makes the whole job's.
        gallery=gallery and chosen is None,
        shard=chosen,
        job_id=job_id,
        fence_lease=fence_lease,
    )
    if dry_run:
        from nanogpt_async._cli._dryrun import dry_run_batch

        runner = functools.partial(dry_run_batch, client, items, settings)
    else:
        runner = functools.partial(run_batch, client, items, settings)
    code = run_async(runner, verbose=_verbose())
    sys.exit(code)


# -- gallery ----------------------------------------------------------------------------------


@cli.command(epilog=_EXIT_CODES_HELP)
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--manifest",
    "manifest_name",
    default="manifest.jsonl",
    show_default=True,
    metavar="NAME",
    help="The manifest's file name in OUT.",
)
@click.option(
    "--thumbnail-size",
    type=click.IntRange(16, 2048),
    default=384,
    show_default=True,
    metavar="PIXELS",
    help="Longest side of the thumbnails.",
)
def gallery(*, out: Path, manifest_name: str, thumbnail_size: int) -> None:
    """Write OUT/index.html to review a batch folder: every image with its prompt and cost.

    A static page that opens from disk (no server, nothing from the network): thumbnails,
    each item's prompt, model, size, seed, cost and status, failed items with their error, a
    filter, sorting by cost or time, and the totals. `batch` refreshes it at the end; run this
    after copying a folder or to change the thumbnail size. Only missing thumbnails are made
    (in OUT/.thumbs/). Prints the page's path.

    \b
    Example:
      nanogpt-async gallery out/ && xdg-open out/index.html
    """
    from nanogpt_async._cli._gallery import describe
    from nanogpt_async._gallery import build_gallery, require_pillow

    if not (out / manifest_name).is_file():
        raise click.BadParameter(
            f"no {manifest_name} in {str(out)!r}: point it at a batch's output folder "
            "(the -o of `nanogpt-async batch`)",
            param_hint="OUT",
        )
    try:
        require_pillow()
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None
    report = run_async(
        functools.partial(
            build_gallery, out, manifest_name=manifest_name, thumbnail_size=thumbnail_size
        ),
        verbose=_verbose(),
    )
    output.err(describe(report))
    output.out(str(report.page))


# -- shards -----------------------------------------------------------------------------------


@cli.command(epilog=_EXIT_CODES_HELP)
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@click.option(
    "--limits-url",
    envvar="NANOGPT_LIMITS_URL",
    show_envvar=True,
    metavar="URL",
    help="redis://host:port/db: also count the items claimed in Redis right now.",
)
@click.option(
    "--api-key",
    envvar="NANOGPT_API_KEY",
    show_envvar=True,
    metavar="KEY",
    help="The job's API key (only hashed: it names the job's keys in Redis).",
)
@click.option(
    "--job-id",
    envvar="NANOGPT_JOB_ID",
    show_envvar=True,
    metavar="ID",
    help="The job's --job-id, if the batch was given one [default: OUT's absolute path].",
)
def status(
    *, out: Path, as_json: bool, limits_url: str | None, api_key: str | None, job_id: str | None
) -> None:
    """Show the progress of every shard of a sharded batch in OUT.

    Per shard, from its manifest: items done, failed, uncertain (claimed by a process that
    stopped before recording them: may have been charged), cost and rate; then the total. A
    shard without a manifest shows as not started. With --limits-url (and the key), the items
    claimed in Redis right now too. Reads only; safe while the shards run.

    \b
    Example:
      nanogpt-async status out/
    """
    from nanogpt_async._cli._shards import (
        fence_claims,
        print_status,
        require_shards,
    )

    progress = require_shards(out)
    claims = None
    if limits_url and api_key:
        output.hide(api_key)
        claims = fence_claims(out, limits_url, api_key, job_id)
    print_status(progress, claims, as_json=as_json)


@cli.command(epilog=_EXIT_CODES_HELP)
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--name",
    default="manifest.merged.jsonl",
    show_default=True,
    metavar="NAME",
    help="The merged manifest's file name in OUT.",
)
@click.option(
    "--gallery/--no-gallery",
    default=True,
    show_default=True,
    help="Then write OUT/index.html from the merged manifest.",
)
def merge(*, out: Path, name: str, gallery: bool) -> None:
    """Merge the shard manifests in OUT into one, in input order, then write the gallery.

    Every line of every shard is kept (ordered by the item's line in the input), so the
    latest line of an item wins and every recorded charge counts, as in a resume. The shard
    manifests stay as they are. Prints the merged manifest's path.

    \b
    Example:
      nanogpt-async merge out/ && xdg-open out/index.html
    """
    from nanogpt_async._batch._shard_report import merge_manifests
    from nanogpt_async._cli._gallery import refresh_gallery
    from nanogpt_async._cli._shards import require_shards

    if not name or name in (".", "..") or any(sep in name for sep in "/\\\0"):
        raise click.BadParameter(f"a plain file name, not {name!r}", param_hint="--name")
    require_shards(out)
    report = merge_manifests(out, name)
    output.err(
        f"merged {report.lines} line(s) of {report.items} item(s) from {report.shards} shard "
        f"manifest(s) into {report.path}"
    )
    if gallery:
        run_async(functools.partial(refresh_gallery, out, manifest_name=name), verbose=_verbose())
    output.out(str(report.path))


# -- demo -------------------------------------------------------------------------------------


@cli.command(epilog=_EXIT_CODES_HELP)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("nanogpt-demo"),
    show_default=True,
    help="Output folder; run again to see the batch resume.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1, max=10_000),
    default=100,
    show_default=True,
    help="How many prompts to generate.",
)
@click.option(
    "--fast",
    is_flag=True,
    hidden=True,
    help="No latency, limits or faults (for tests of the command itself).",
)
@progress_options
def demo(*, out: Path, count: int, fast: bool, progress: str, progress_interval: float) -> None:
    """Run a batch on the built-in fake NanoGPT server: no key, no network, no cost.

    The fake behaves like the real thing: generation latency, a 25 requests/second limit,
    occasional 5xx errors, some signed URLs falling back to base64, URLs that expire after
    20 seconds. The batch runs through the same code as `nanogpt-async batch`.
    """
    from nanogpt_async._cli._batchrun import (
        BatchSettings,
        PromptSource,
        aiter_sync,
        run_batch,
    )
    from nanogpt_async._cli._demo import demo_fake, demo_items

    fake = demo_fake(fast=fast)
    settings = BatchSettings(
        out=out,
        concurrency=64,
        download_concurrency=32,
        max_cost=None,
        retry_failed=True,
        progress=progress,
        progress_interval=progress_interval,
        defaults={},
    )
    with fake.run_in_thread() as server:
        output.err(
            f"demo: a fake NanoGPT server runs at {server.base_url} (loopback only); "
            f"generating {count} images into {out}/"
        )
        client = make_client(api_key=server.api_key, base_url=server.base_url)
        code = run_async(
            functools.partial(
                run_batch,
                client,
                PromptSource(items=aiter_sync(demo_items(count)), total=count),
                settings,
                demo=True,
            ),
            verbose=_verbose(),
        )
    sys.exit(code)


# -- fake-server ------------------------------------------------------------------------------

_FAKE_KNOBS: Sequence[tuple[str, Any, Any, str]] = (
    # (option, type, default, help); names match FakeNanoGPT's arguments.
    ("--latency", click.FloatRange(min=0), 0.0, "Seconds each generation takes."),
    ("--latency-jitter", click.FloatRange(min=0), 0.0, "Latency varies by +- this."),
    ("--rate-limit", click.FloatRange(min=0, min_open=True), None, "Requests/second allowed."),
    ("--burst", click.IntRange(min=1), None, "Token bucket size [default: the rate limit]."),
    ("--daily-request-cap", click.IntRange(min=0), None, "Generation requests per UTC day."),
    ("--daily-usd-cap", click.FloatRange(min=0), None, "USD charged per UTC day."),
    ("--balance", click.FloatRange(min=0), 100.0, "Account balance in USD."),
    ("--price-per-image", click.FloatRange(min=0), 0.005, "USD charged per image."),
    ("--error-rate", click.FloatRange(0, 1), 0.0, "Fraction of requests answered 5xx."),
    ("--reset-rate", click.FloatRange(0, 1), 0.0, "Fraction charged, then connection reset."),
    ("--url-fallback-rate", click.FloatRange(0, 1), 0.0, "Fraction of url items sent as b64."),
    ("--url-ttl", click.FloatRange(min=0), 3600.0, "Seconds a signed URL stays valid."),
    ("--file-ttl", click.FloatRange(min=0), 86400.0, "Seconds until a stored file is deleted."),
    ("--download-latency", click.FloatRange(min=0), 0.0, "Seconds before a download answers."),
    ("--image-bytes", click.IntRange(min=1), None, "Approximate PNG size [default: tiny]."),
    ("--seed", int, 0, "Seed of all randomness."),
)


def fake_knob_options(func: _F) -> _F:
    """One option per `FakeNanoGPT` knob."""
    for name, kind, default, text in reversed(_FAKE_KNOBS):
        func = click.option(
            name, type=kind, default=default, show_default=default is not None, help=text
        )(func)
    return func


@cli.command("fake-server")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="API port [default: any free port]."
)
@click.option(
    "--download-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Signed-URL port [default: any free port].",
)
@click.option(
    "--accept-key",
    default="test-key",
    show_default=True,
    help="The API key the fake accepts; an empty string accepts any key.",
)
@fake_knob_options
def fake_server(*, host: str, port: int, download_port: int, accept_key: str, **knobs: Any) -> None:
    """Run the fake NanoGPT server on loopback until Ctrl-C, to test your own code offline.

    Prints NANOGPT_BASE_URL=... on stdout once it listens (a line scripts can wait for),
    then how to point a client at it on stderr.

    \b
    Example:
      nanogpt-async fake-server --port 8765 --latency 1 --rate-limit 25 --error-rate 0.05
    """
    from nanogpt_async.testing import FakeNanoGPT, run_forever

    try:
        fake = FakeNanoGPT(api_key=accept_key or None, **knobs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    def announce(server: Any) -> None:
        click.echo(f"NANOGPT_BASE_URL={server.base_url}")
        sys.stdout.flush()
        click.echo(
            f"fake NanoGPT listening on {server.base_url} (downloads on "
            f"{server.download_base_url}). Point your code at it:\n"
            f"  export NANOGPT_BASE_URL={server.base_url} NANOGPT_API_KEY={server.api_key}\n"
            "Ctrl-C to stop.",
            err=True,
        )

    try:
        run_forever(fake, host, port, download_port=download_port, ready_callback=announce)
    except (ValueError, OSError) as exc:
        output.error(exc)
        sys.exit(EXIT_USAGE)
    output.err("fake NanoGPT stopped")
