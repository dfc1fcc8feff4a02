"""What counts as a user's mistake, and how to find it again inside TensorFlow's errors.

The command line's rule: a user mistake (bad path, bad option, unusable data) ends in one line
naming the file or option and the fix, exit code 2; any other exception is featx's own bug and
keeps its traceback. Modules raise a subclass of :class:`UserError` for a user's mistake, never a
bare ``ValueError``, so a ``ValueError`` from a real bug is never dressed up as advice.
"""

from __future__ import annotations

import re

__all__ = ["UserError", "unwrap_tf_error"]


class UserError(Exception):
    """A mistake in what the user asked for or gave; the message names the file/option and the fix."""


def _subclasses(cls: type) -> list[type]:
    return [found for sub in cls.__subclasses__() for found in (sub, *_subclasses(sub))]


def unwrap_tf_error(exc: BaseException) -> BaseException:
    """The user error hidden in a TensorFlow ``OpError`` raised through ``tf.py_function``.

    TensorFlow's message reads ``... Iterator::Root::Map: ImageError: a.jpg: not an image\nTraceback
    ...``. Returns a :class:`UserError` carrying the original one-line message when the embedded
    exception is of a user-error class (found by name: the original object does not survive
    TensorFlow); otherwise ``exc`` itself, unchanged, so a real bug keeps its own type and traceback.
    """
    if isinstance(exc, UserError) or not any(c.__name__ == "OpError" for c in type(exc).__mro__):
        return exc
    names = sorted({c.__name__ for c in (UserError, *_subclasses(UserError))}, key=len, reverse=True)
    text = getattr(exc, "message", None) or str(exc)
    # Only the line before the embedded traceback names the exception that ended the call; a user
    # error further down (one a featx bug raised while handling it) must not hide the bug.
    head = text.split("\nTraceback (most recent call last)", 1)[0]
    match = re.search(r"(?:^|[\s:.])(?:" + "|".join(map(re.escape, names)) + r"): ([^\n]+)", head)
    if match is None:
        return exc
    unwrapped = UserError(match.group(1).strip())
    unwrapped.__cause__ = exc
    return unwrapped


class RuntimeUnavailable(UserError):
    """An inference runtime that cannot run here (e.g. ``--runtime openvino`` without openvino)."""
