"""Issue 15's two code measures: the largest classes, and inline ``noqa`` comments.

Class size is ``end_lineno - lineno + 1`` of each ``class`` statement (docstring and methods
included); ``noqa`` counts comments, not the codes in them.

Usage: ``python tools/class_sizes.py [path ...] [--over 150]`` (default path: the package).
"""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from pathlib import Path


def class_sizes(root: Path) -> list[tuple[int, str]]:
    """``(lines, "file:Class")`` of every class under ``root``, largest first."""
    sizes = [
        (node.end_lineno - node.lineno + 1, f"{path}:{node.name}")
        for path in sorted(root.rglob("*.py") if root.is_dir() else [root])
        for node in ast.walk(ast.parse(path.read_text("utf-8")))
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
    ]
    return sorted(sizes, reverse=True)


def noqa_count(root: Path) -> int:
    """Comments carrying ``noqa`` under ``root``."""
    count = 0
    for path in root.rglob("*.py") if root.is_dir() else [root]:
        text = path.read_text("utf-8")
        if "noqa" not in text:
            continue  # most files: tokenizing them all was 0.3 s of the suite's CPU
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT and "noqa" in token.string:
                count += 1
    return count


def main() -> None:
    """Print the classes over ``--over`` lines and the noqa count, per path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("nanogpt_async")])
    parser.add_argument("--over", type=int, default=150)
    args = parser.parse_args()
    for root in args.paths:
        sizes = class_sizes(root)
        print(f"{root}: largest class {sizes[0][0] if sizes else 0} lines; noqa {noqa_count(root)}")
        for lines, name in sizes:
            if lines > args.over:
                print(f"  {lines:5d}  {name}")


if __name__ == "__main__":
    main()
