"""``main``: run one command with the one error style of docs/cli.md (user error -> one line on
stderr, exit 2; bad data in a job -> exit 1; a bug -> a traceback; ``--debug`` shows it all)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ._common import storage_options_of
from .parser import build_parser

__all__ = ["main"]


def _check_config_args(argv: list[str], command: str) -> None:
    """A missing ``-c/--config FILE`` of ``train-vae`` is a user error, said in one line."""
    from ..errors import ConfigError

    for flag, value in zip(argv, argv[1:]):
        if flag in ("-c", "--config") and not Path(value).is_file():
            raise ConfigError(f"{command}: no such config file: {value!r} (the YAML files under "
                              "latentds/train/vae/configs/ are examples; `latentds train-vae print-config` shows every key)")


_CURRENT: dict[str, Any] = {}


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "train-vae":  # the trainer parses its own YAML + --set overrides
        _check_config_args(argv[1:], "train-vae")
        from latentds.train.vae.cli import main as train_vae

        return int(train_vae(argv[1:]))
    if argv and argv[0] == "review":  # `latentds review` has its own sub-commands (latentds/review/)
        from ..review.cli import main as review

        return int(review(argv[1:]))
    args = build_parser().parse_args(argv)
    _CURRENT["storage_options"] = storage_options_of(args)  # so an error message can redact their secrets
    return int(args.func(args))


def _stdout_is_a_closed_pipe() -> bool:
    """True when fd 1 is a pipe whose reader has gone (poll reports POLLERR on its write end)."""
    try:
        import select

        fd = sys.stdout.fileno()  # a replaced stdout (notebook, redirect_stdout) has none: not ours
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no fileno, a closed stdout
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latentds``; returns the exit code (0 ok, 1 bad data in a job, 2 user error)."""
    from ..errors import LatentdsError, missing_extra

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("LATENTDS_DEBUG", "") not in ("", "0") or "--debug" in argv[:1]
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
    try:
        return _run(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("latentds: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output left early (`latentds inspect CACHE | head`): not an error of ours.
        # Only when stdout itself is the broken pipe: any other pipe (a helper process, a socket) is
        # a real error. stdout goes to devnull so the interpreter's final flush does not raise
        # again; 141 = 128 + SIGPIPE, what a shell reports for a command that a pipe stopped.
        if debug or not _stdout_is_a_closed_pipe():
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as exc:
        err = missing_extra(exc, f"`latentds {argv[0]}`" if argv else None)
        if debug or not isinstance(err, LatentdsError):
            raise  # a module that no extra provides: a packaging bug, keep the traceback
        print(f"latentds: error: {err}", file=sys.stderr)
        return 2
    except LatentdsError as exc:
        if debug:
            raise
        from ..store.fsio import redact

        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"latentds: error: {redact(message, _CURRENT.get('storage_options'))}", file=sys.stderr)
        return 2
