"""``python -m nanogpt_async``: the same command line as ``nanogpt-async``."""

from __future__ import annotations

from nanogpt_async._cli import main

if __name__ == "__main__":
    main()
