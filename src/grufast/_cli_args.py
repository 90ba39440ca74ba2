"""argparse types shared by the command line's subcommands (check, bench, demo): a bad
value ends the command at once with a usage error (exit status 2), before any work, not
with a traceback after minutes of it."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable


def int_at_least(option: str, least: int = 1) -> Callable[[str], int]:
    """A parser of an int >= ``least`` (1 unless given) for ``option``."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = least - 1
        if n < least:
            what = "a positive integer" if least == 1 else f"an integer >= {least}"
            raise argparse.ArgumentTypeError(f"{option} takes {what}, got {text!r}")
        return n
    return parse


def seed_arg(text: str) -> int:
    """A random seed: NumPy's generators take integers >= 0."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--seed takes an integer >= 0, got {text!r}")
    return n


def positive_float(option: str) -> Callable[[str], float]:
    """A parser of a finite float > 0 for ``option``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"{option} takes a finite number > 0, got "
                                             f"{text!r}")
        return v
    return parse


def output_file(text: str) -> str:
    """A file the command can create or replace: not a directory; writable if it exists,
    else in a directory that exists and is writable (checked now, since the file is written
    after the run). Returns the path with ``~`` expanded (the shell leaves ``--json=~/x``
    alone)."""
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file to write")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
    elif not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: directory {parent!r} does "
                                         "not exist")
    elif not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
    return path
