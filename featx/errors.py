"""What counts as a user's mistake, and how to find it again inside TensorFlow's errors.

The command line's rule: a user mistake (bad path, bad option, unusable data) ends in one line
naming the file or option and the fix, exit code 2; any other exception is featx's own bug and
keeps its traceback. :class:`UserError` is the one base class of the first kind; modules raise a
subclass of it (``DataError``, ``CacheError``...) and never a bare ``ValueError`` for a user's
mistake, so a ``ValueError`` from a real bug is never dressed up as advice.

Errors raised inside ``tf.py_function`` reach the caller as ``tf.errors.OpError`` whose message
embeds the original ``ClassName: message`` and a traceback; :func:`unwrap_tf_error` finds a user
error in there again.
"""

from __future__ import annotations

import re

__all__ = ["UserError", "user_error_types", "unwrap_tf_error", "register_user_error"]


class UserError(Exception):
    """A mistake in what the user asked for or gave; the message names the file/option and the fix."""


_EXTRA: list[type[BaseException]] = []


def register_user_error(cls: type[BaseException]) -> type[BaseException]:
    """Count ``cls`` (defined where it cannot subclass :class:`UserError`) as a user error.

    Usable as a class decorator.
    """
    if cls not in _EXTRA:
        _EXTRA.append(cls)
    return cls


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def user_error_types() -> tuple[type[BaseException], ...]:
    """:class:`UserError` and every class registered with :func:`register_user_error`."""
    return (UserError, *_EXTRA)


# "... MapDataset:1 transformation ...: ImageError: a.jpg: cannot decode\nTraceback (most recent call last):"
_EMBEDDED = re.compile(r"(?:^|[\s:])(?P<cls>[A-Za-z_][A-Za-z0-9_]*): (?P<message>.*?)\n\s*Traceback \(most recent",
                       re.S)


def unwrap_tf_error(exc: BaseException) -> BaseException:
    """The user error hidden in a TensorFlow ``OpError`` raised through ``tf.py_function``.

    Returns a :class:`UserError` carrying the original message when the embedded exception is of a
    user-error class (by name: the original object does not survive TensorFlow); otherwise ``exc``
    itself, unchanged, so a real bug keeps its own type and traceback.
    """
    if isinstance(exc, user_error_types()):
        return exc
    if not any(c.__name__ == "OpError" for c in type(exc).__mro__):
        return exc
    names = {c.__name__ for base in user_error_types() for c in (base, *_subclasses(base))}
    text = getattr(exc, "message", None) or str(exc)
    for match in _EMBEDDED.finditer(text):
        if match.group("cls") in names:
            message = match.group("message").strip().splitlines()[0]
            unwrapped = UserError(message)
            unwrapped.__cause__ = exc
            return unwrapped
    return exc


class RuntimeUnavailable(UserError):
    """An inference runtime that cannot run here (e.g. ``--runtime openvino`` without openvino)."""
