"""`minillm summary`: the table of what the last run made (stages, final losses, the latest
scores, step times, artifact paths), read from the artifacts under the project root."""

from __future__ import annotations

import argparse
import sys

from minillm_core.errors import ArtifactError
from minillm_core.layout import Layout
from minillm_core.summary import summary_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="minillm summary", description=__doc__)
    p.add_argument(
        "--root", default=None, help="project root (default: MINILLM_ROOT, else the checkout)"
    )
    args = p.parse_args(argv)
    try:
        print(summary_table(Layout.at(args.root)))
    except ArtifactError as exc:  # a corrupt model.json or metadata file: named, one line
        print(f"minillm summary: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
