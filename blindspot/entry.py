"""The console script's entry: importing the CLI pulls in torch (seconds), so a Ctrl-C can land
before `main` runs; it still gets one line and exit code 130, never a traceback."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def run() -> None:
    try:
        from blindspot.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting\n")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(main())
