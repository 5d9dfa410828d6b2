"""The ``celery-janitor`` console script and ``python -m celery_janitor``: the CLI, run by the
extension module in this process (same flags, output and exit codes as the Rust binary)."""

from __future__ import annotations

import sys

from celery_janitor import _native


def main() -> None:
    """Run the CLI on this process's arguments and exit with its exit code."""
    sys.exit(_native.main(["celery-janitor", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
