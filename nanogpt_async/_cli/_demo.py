"""What ``nanogpt-async demo`` runs: a realistic fake server and a hundred varied prompts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanogpt_async.testing import FakeNanoGPT

__all__ = ["DEMO_PROMPTS", "demo_fake", "demo_items"]

DEMO_PROMPTS: tuple[str, ...] = (
    "a lighthouse at dusk, waves crashing, oil painting",
    "a red fox curled up asleep in fresh snow",
    "isometric pixel art of a tiny ramen shop at night",
    "a watercolour map of an imaginary archipelago",
    "macro photo of dew drops on a spider web at sunrise",
    "a cozy reading nook with a cat, rain on the window",
    "retro 1970s travel poster for the planet Mars",
    "a bonsai tree growing out of an old pocket watch",
    "an astronaut tending a vegetable garden on the moon",
    "a Victorian greenhouse full of glowing mushrooms",
    "a steam locomotive crossing a viaduct in autumn",
    "studio portrait of a very serious corgi wearing a bow tie",
    "a paper-cut diorama of a coral reef",
    "a bustling night market in the rain, neon reflections",
    "blueprint drawing of a flying bicycle",
    "a snow-covered cabin under the northern lights",
    "low-poly render of a desert canyon at noon",
    "a jar of fireflies on a picnic blanket at twilight",
    "ukiyo-e print of a giant wave and a tiny surfer",
    "a robot barista pouring latte art",
    "a hot air balloon festival over lavender fields",
    "charcoal sketch of an old fisherman mending nets",
    "a treehouse village connected by rope bridges",
    "a stained glass window depicting a phoenix",
    "a minimalist poster of a single orange on blue",
    "a submarine exploring a sunken library",
    "claymation-style owl reading a newspaper",
    "an alpine lake so still it mirrors the peaks",
    "a cyberpunk alley with a noodle vending machine",
    "botanical illustration of an imaginary flower",
    "a castle built into a waterfall",
    "a child's crayon drawing of a dragon, scanned",
    "a vintage diner at 3am, one customer, film grain",
    "an origami crane flock flying over Kyoto",
    "a greenhouse on a space station, Earth in the window",
    "a foggy forest path with a lantern on a post",
    "a chess game between a cat and a raven",
    "art nouveau poster for a tea company",
    "a desert caravan under a huge crescent moon",
    "a rainy Paris street in the style of impressionism",
    "a tiny planet made of cheese, orbiting a toaster",
    "a lush terraced rice field at golden hour",
    "an abandoned amusement park reclaimed by vines",
    "a close-up of a hummingbird drinking nectar",
    "a lantern-lit bridge over a koi pond",
    "a geometric mosaic of a sunflower",
    "a detective's desk covered in clues, noir lighting",
    "a snowy mountain monastery at dawn",
    "a 3D render of a glossy rubber duck armada",
    "an underwater city with bioluminescent streets",
    "a medieval map with sea monsters in the margins",
    "a bakery window full of impossible pastries",
    "a thunderstorm over wheat fields, dramatic sky",
    "a sloth astronaut floating in zero gravity",
    "a quiet Japanese garden covered in first snow",
    "a street musician playing violin under a streetlamp",
    "an ornate clockwork beetle, studio lighting",
    "a floating island with a waterfall pouring into clouds",
    "a comic panel of two pigeons arguing about bread",
    "a misty Scottish glen with a lone stag",
    "a neon sign that says 'open late' in a rainy window",
    "a whimsical map of a cat's daily territory",
    "a sailing ship made of glass on a calm sea",
    "a field of windmills at sunset, Dutch golden age style",
    "an alchemist's workbench with bubbling potions",
    "a polar bear cub sliding down an ice slope",
    "a ceramic vase with a painted mountain landscape",
    "a busy harbour seen from a seagull's eye",
    "a vintage botanical poster of edible mushrooms",
    "a library staircase spiralling into the clouds",
    "a mountain biker in mid-air over a ridge",
    "a still life of lemons and a copper kettle",
    "a hedgehog knight with an acorn helmet",
    "a sunrise over a sea of clouds from a plane window",
    "a colourful Moroccan tile pattern, top-down",
    "a lonely robot watching the stars from a hill",
    "an art deco skyscraper lobby, gold and black",
    "a tide pool full of starfish and anemones",
    "a candle-lit dinner on a rooftop in the rain",
    "a vintage sci-fi book cover with a ringed planet",
    "a field guide page of imaginary beetles",
    "a wolf howling on a cliff, double exposure with a forest",
    "a tiny mouse chef cooking in a doll kitchen",
    "the inside of a cosy submarine, warm lamps",
    "a kite festival on a windy beach",
    "a sand sculpture of a sleeping dragon",
    "a frozen waterfall with ice climbers",
    "an infographic of how to brew the perfect tea",
    "a koala DJ at a beach party, flat illustration",
    "a cottage garden in full bloom, English summer",
    "a space elevator rising from a tropical island",
    "a vintage photo of a lighthouse keeper and his dog",
    "a marble statue wearing modern headphones",
    "a honeybee on lavender, shallow depth of field",
    "a cabin in the woods drawn as a line illustration",
    "a night train crossing a starry desert",
    "a mechanical whale flying over a city",
    "a pumpkin patch at dusk with glowing lanterns",
    "a kaleidoscope of autumn leaves",
    "a quiet harbour town after the rain, evening lights",
)


def demo_items(count: int) -> Iterator[dict[str, Any]]:
    """``count`` requests, with ids, mixing both response formats like a real workload.

    Every third item asks for signed URLs (downloaded at once by the batch runner, some
    falling back to base64); the rest for base64. Past the list's end prompts repeat with a
    variation number, so any count works.
    """
    for index in range(count):
        prompt = DEMO_PROMPTS[index % len(DEMO_PROMPTS)]
        if index >= len(DEMO_PROMPTS):
            prompt = f"{prompt} (variation {index // len(DEMO_PROMPTS) + 1})"
        yield {
            "id": f"demo-{index + 1:04d}",
            "prompt": prompt,
            "response_format": "url" if index % 3 == 2 else "b64_json",
        }


def demo_fake(*, fast: bool = False) -> FakeNanoGPT:
    """A fake NanoGPT that behaves like the real one, only quicker and free.

    Generation takes 0.2-1.0 s, the account allows 25 requests/second (bursts of 5), 3% of
    requests fail with a 5xx (the client retries them), 10% of URL items come back as base64,
    and signed URLs expire after 20 seconds. ``fast`` drops latency, limits and faults.
    """
    from nanogpt_async.testing import FakeNanoGPT

    if fast:
        return FakeNanoGPT(url_fallback_rate=0.1, url_ttl=20.0)
    return FakeNanoGPT(
        latency=0.6,
        latency_jitter=0.4,
        rate_limit=25.0,
        burst=5,
        error_rate=0.03,
        url_fallback_rate=0.1,
        url_ttl=20.0,
        download_latency=0.02,
    )
