"""The one kind of error a user's mistake raises, and how it is shown.

Every error about a user's input (a corpus file, an audio file, params.yaml, a bundle, a command-line value)
derives from UserError. The command line and the notebook runner print such an error as

    error: <file, key or value>: <what is wrong> (<how to fix it>)

and exit with status 1; any other exception is a bug and keeps its traceback (in the executed notebook for a
stage). UserError is a mixin on Exception, so that each error can also keep the built-in base that callers
catch (ValueError, FileNotFoundError): `class AudioError(UserError, ValueError)`.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names the file, line, key or value, and says how to fix it."""


def user_error_names() -> set[str]:
    """The class names of every UserError subclass defined so far (a notebook cell's error arrives as a name)."""
    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def message_line(error: BaseException | str) -> str:
    """`error: ...` for printing: the message as it is (a message listing several bad files keeps one line per
    file after its first line)."""
    return f"error: {str(error).strip()}"
