"""Error kinds, the exit codes they map to (so an orchestrator knows whether to retry), and the one
line a failed command ends with.

Exit codes of every ``tlops`` command:

* 0: done.
* 1: an internal error: a library or a bug failed where no input check caught it. The traceback is
  printed, then one line naming the exception type, its message and where it was raised. Also a full
  disk (ENOSPC, EDQUOT): one line naming the file being written, no traceback.
* 2: bad input (params, data, paths): retrying cannot help; one line names the file, key or value.
* 75 (EX_TEMPFAIL): a network or storage hiccup outlived the stage's own retries; a retry may succeed.
"""

from __future__ import annotations

import errno
import traceback
from pathlib import Path

__all__ = ["TransientError", "GateFailed", "DISK_FULL", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_TRANSIENT",
           "BAD_INPUT_ERRORS", "raised_in_pipeline", "describe_error"]

EXIT_INTERNAL = 1  # an unexpected failure: the traceback is shown
EXIT_BAD_INPUT = 2  # bad params or data: retrying cannot help
EXIT_REFUSED = 3  # `tlops registry promote`: the blessing refused the version (the champion stays)
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: a network or storage hiccup; a retry may succeed

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # OSError numbers of a full disk or quota
_PIPELINE = Path(__file__).resolve().parents[1]


class TransientError(RuntimeError):
    """A failure that may pass on retry: throttling, 5xx, a dropped connection, a timeout, a killed stage.

    The one transient kind, in and out of a stage: code raises it (from the original error) when its own
    retries are used up, and a ``tlops`` command then exits 75; a run's workspace raises it when a stage
    exited 75 or was killed, or ``dvc push`` / ``dvc pull`` kept failing (pipeline/runs/workspace.py); and
    the flows retry a task only on it (flows/retrain.py).
    """


class GateFailed(ValueError):
    """A gate said no after writing its report whole (the validation gate): bad input, and the outputs
    stand, because they explain the failure (:func:`pipeline.common.io.replaced_as_set` keeps them)."""

    outputs_written = True


# The kinds our own input checks raise, each with a sentence naming the file, key or value.
BAD_INPUT_ERRORS = (KeyError, FileNotFoundError, ValueError)


def _frames(err: BaseException) -> list[traceback.FrameSummary]:
    return traceback.extract_tb(err.__traceback__)


def _ours(frame: traceback.FrameSummary) -> bool:
    return Path(frame.filename).resolve().is_relative_to(_PIPELINE)


def raised_in_pipeline(err: BaseException) -> bool:
    """True when our own code raised ``err`` on purpose: the innermost frame is ours and, for a
    KeyError, the message is a sentence (a bare ``d[key]`` lookup says only the key)."""
    frames = _frames(err)
    if frames and not _ours(frames[-1]):
        return False
    return not isinstance(err, KeyError) or (isinstance(err.args[0], str) and " " in err.args[0] if err.args else False)


def _where(frame: traceback.FrameSummary) -> str:
    path = Path(frame.filename).resolve()
    for base in (*(p for p in path.parents if p.name == "site-packages"), _PIPELINE.parent):
        if path.is_relative_to(base):
            return f"{path.relative_to(base)}:{frame.lineno}"
    return f"{path}:{frame.lineno}"


def describe_error(err: BaseException, internal: bool = False) -> str:
    """One line for a failure: our own checks' sentence as it is; anything else (and any ``internal``
    error) as ``Type: message (raised in <library>/<file>.py:N, called from pipeline/<file>.py:M)``."""
    if not internal and raised_in_pipeline(err) and str(err):
        return err.args[0] if isinstance(err, KeyError) else str(err)
    message = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    frames = _frames(err)
    if not frames:
        return message
    places = [f"raised in {_where(frames[-1])}"]
    caller = next((f for f in reversed(frames[:-1]) if _ours(f)), None)
    if caller is not None and not _ours(frames[-1]):
        places.append(f"called from {_where(caller)}")
    return f"{message} ({', '.join(places)})"
