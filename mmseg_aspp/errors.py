"""The one exception family the tools report as a message rather than a traceback."""
from __future__ import annotations


class MmsegAsppError(Exception):
    """Bad input the user can fix; the message says what was wrong and how to fix it."""


def user_message(err: BaseException) -> str:
    """The message of ``err`` without the traceback text DataLoader workers prepend.

    An exception raised in a worker is re-raised in the main process with the
    worker's traceback folded into its message; only the last line is ours.
    """
    text = str(err)
    marker = f"{type(err).__name__}: "
    return text.rsplit(marker, 1)[-1] if "Original Traceback" in text else text
