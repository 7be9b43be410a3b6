"""Error kinds that decide what the CLI's exit code says (and so whether an orchestrator retries)."""

from __future__ import annotations

__all__ = ["TransientError", "EXIT_BAD_INPUT", "EXIT_TRANSIENT"]

EXIT_BAD_INPUT = 2  # bad params or data: retrying cannot help
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: a network or storage hiccup; a retry may succeed


class TransientError(RuntimeError):
    """A failure that may pass on retry: throttling, 5xx, a dropped connection, a timeout.

    Raise it (from the original error) after a stage's own retries are used up.
    """
