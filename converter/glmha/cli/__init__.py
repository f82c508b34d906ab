"""What glmha's command-line tools share."""

from __future__ import annotations

import sys
from collections.abc import Callable

from glmha.errors import GlmhaError


def run_command(prog: str, run: Callable[[], int], *, interrupted: str = "interrupted") -> int:
    """Run a command's body the way every glmha command ends: a GlmhaError is one line on stderr and exit
    status 1, Ctrl-C a note (what was kept) and 130; anything else is a bug and keeps its traceback."""
    try:
        return run()
    except GlmhaError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130

