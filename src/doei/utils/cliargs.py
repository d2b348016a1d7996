"""The flags every ``doei`` verb spells the same way, and the help formatter that shows defaults.

One name per meaning, on every verb that has the meaning (docs/conventions.md):

* ``--data-root DIR`` — the dataset folder;
* ``--device NAME`` — auto | cpu | cuda | cuda:N;
* ``--no-progress`` — no progress bars;
* ``--overwrite`` — replace finished outputs instead of refusing / reusing them;
* ``-q/--quiet``, ``-v/--verbose`` — logging level (added by ``doei.cli`` to every verb).

An older spelling users may rely on stays accepted as a hidden alias (:func:`deprecated_alias`) that prints
a one-line deprecation warning and sets the same destination.
"""
from __future__ import annotations

import argparse
import warnings

from doei.errors import DoeiWarning


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions/epilogs as written and appends ``(default: X)`` to a flag's help when the help
    does not already state its default and the default is informative (not None/False/[])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (not action.option_strings or d is None or d is False or d == [] or d is argparse.SUPPRESS
                or "default" in text.lower() or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: {d})"


def add_data_root(p: argparse.ArgumentParser, help: str = "dataset folder", **kw) -> None:
    p.add_argument("--data-root", default=None, help=help, **kw)


def add_device(p: argparse.ArgumentParser, sets: str = "") -> None:
    """``--device``; ``sets`` names the config key(s) it overrides."""
    p.add_argument("--device", default=None,
                   help="auto, cpu, cuda or cuda:N" + (f"; sets {sets}" if sets else "")
                   + " (default: the config's; auto = cuda when available)")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_overwrite(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


class _Deprecated(argparse.Action):
    def __init__(self, option_strings, dest, new: str = "", **kw) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warnings.warn(f"{option_string} is deprecated; use {self.new}", DoeiWarning, stacklevel=2)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, flag: bool = False) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same ``dest``), with a one-line DoeiWarning."""
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, nargs=0 if flag else None,
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def overrides(args: argparse.Namespace, keys: dict[str, tuple[str, ...]]) -> list[str]:
    """``--set`` strings for the shared flags given on the command line: ``keys`` maps ``device`` /
    ``progress`` to the config keys they set (the flags win over the config file and ``--set``)."""
    out: list[str] = []
    if getattr(args, "device", None):
        out += [f"{k}={args.device}" for k in keys.get("device", ())]
    if getattr(args, "no_progress", False):
        out += [f"{k}=false" for k in keys.get("progress", ())]
    return out


__all__ = ["HelpFormatter", "add_data_root", "add_device", "add_no_progress", "add_overwrite", "deprecated_alias",
           "overrides"]
