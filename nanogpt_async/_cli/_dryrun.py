"""``batch --dry-run``: check the input against the image-models list and print the cost.

Sends no paid request: the only call is the free ``GET /image-models``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from nanogpt_async._cli._common import EXIT_OK, EXIT_USAGE, output

if TYPE_CHECKING:
    from nanogpt_async._batch._plan import BatchPlan
    from nanogpt_async._cli._batchrun import BatchSettings, PromptSource
    from nanogpt_async._client import AsyncNanoGPT

__all__ = ["dry_run_batch", "plan_lines"]


def _usd(amount: Decimal | None) -> str:
    return "unknown" if amount is None else f"${amount:.4f}"


def plan_lines(plan: BatchPlan, max_cost: float | None) -> list[str]:
    """The plan as the lines ``--dry-run`` prints."""
    lines = [
        "dry run: nothing was sent; prices are from the image-models list",
        f"  items                  {plan.items}",
        f"  to send                {plan.requests} request(s), {plan.images} image(s)",
        f"  skipped (done before)  {plan.skipped}",
        f"  invalid                {plan.invalid}",
    ]
    for line in plan.lines:
        size = line.size or "default size"
        lines.append(
            f"    {line.model} {size}: {line.requests} request(s), {line.images} image(s) at "
            f"{_usd(line.per_image)}/image = {_usd(line.cost)}"
        )
    unpriced = f" (+ {plan.unpriced} request(s) without a price)" if plan.unpriced else ""
    lines.append(f"  estimated cost         {_usd(plan.estimated_cost)}{unpriced}")
    if max_cost is not None:
        budget = Decimal(str(max_cost))
        verdict = (
            "fits"
            if plan.estimated_cost <= budget and not plan.unpriced
            else "the batch would stop at the budget before every item is done"
        )
        lines.append(f"  --max-cost             {_usd(budget)}: {verdict}")
    if plan.problems:
        lines.append("problems (fix them before running):")
        lines.extend(f"  - {problem}" for problem in plan.problems)
    return lines


async def dry_run_batch(client: AsyncNanoGPT, source: PromptSource, settings: BatchSettings) -> int:
    """Plan the batch and print it; exit 0 when it can run as is, 2 when the input has problems."""
    async with client:
        batch = client.images.generate_many(
            source.items,
            output_dir=settings.out,
            concurrency=settings.concurrency,
            download_concurrency=settings.download_concurrency,
            max_cost=settings.max_cost,
            retry_failed=settings.retry_failed,
            total=source.total,
            **settings.defaults,
        )
        plan = await batch.dry_run()
    for line in plan_lines(plan, settings.max_cost):
        output.out(line)
    return EXIT_OK if plan.ok else EXIT_USAGE
