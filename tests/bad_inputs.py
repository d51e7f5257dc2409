"""Helpers of the bad-input matrix (tests/test_bad_inputs_*.py): every case asserts the exit status, that the
one error message names the file, key or value at fault, and that nothing partial or stale is left behind."""
from __future__ import annotations

from pathlib import Path

import pytest

from medusa.errors import UserError


def refused(main, argv: list[str], capsys, *names: str) -> str:
    """Run a command-line entry (medusa.cli.main or medusa.pipeline.run.main) in-process and assert a user's
    mistake: exit status 1, stderr's `error:` message names every one of `names`, no traceback. Returns stderr."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err and "\x1b[" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors, err
    for name in names:
        assert name in err, f"{name!r} not in: {err}"
    return err


def user_error(fn, *args, names: tuple[str, ...] = (), **kwargs) -> str:
    """Call fn and assert it raises a UserError (shown as one `error:` line, exit 1, by the CLI and the stage
    runner) whose message names each of `names`. Returns the message."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not in: {message}"
    return message


def leftovers(folder: str | Path) -> list[str]:
    """Temporary and partial files under `folder` (an atomic write's `.NAME.tmp-PID`, a `.partial` store)."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name or
                  p.name.endswith(".partial"))
