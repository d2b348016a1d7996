"""The ``doei`` command line: one entry point, one module per sub-command.

Each sub-command lives in ``doei.commands.<module>`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``doei --help`` is
fast and a broken optional dependency affects only the command that needs it.

Errors: a :class:`doei.errors.DoeiError` (bad input) prints one line ``doei <cmd>: error: ...``
to stderr and exits with status 2. A :class:`doei.errors.DoeiWarning` (a setting that can do nothing, an
explicit override) prints one line ``doei <cmd>: warning: ...`` and the command goes on.

Every verb takes ``-q/--quiet`` (warnings and results only: no progress bars, no informational log lines)
and ``-v/--verbose`` (debug log lines too), through Python's :mod:`logging` (logger ``doei``); they may
also come before the verb (``doei -q cam ...``). ``doei --version`` prints the version. The flags shared
by several verbs have one spelling everywhere (:mod:`doei.utils.cliargs`).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

import doei
from doei.errors import DoeiError, DoeiWarning
from doei.utils.cliargs import HelpFormatter

LOG = logging.getLogger("doei")

# name -> (module under doei.commands, one-line help). Add a line here to add a command.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("eval_cmd", "score seed PNGs or CAM files against ground truth (mIoU, FP, FN, beta sweep)"),
    "cam": ("cam_cmd", "multi-scale CAMs of a split, one .npz per image (+ seed PNGs, CRF labels, overlays)"),
    "train-cls": ("train_cls_cmd", "train the classifier (MCTformer-V2 objective, DOEI on/off) from a YAML config"),
    "demo": ("demo_cmd", "DOEI end to end on the synthetic benchmark: train twice, CAMs, beta sweep, report"),
    "synth": ("synth_cmd", "generate the synthetic WSSS benchmark (VOC layout, deterministic from --seed)"),
    "labels": ("labels_cmd", "write a dataset's image-level labels file once (VOC XML/masks/npy, COCO JSON)"),
    "coco-masks": ("coco_masks_cmd", "COCO ground-truth PNGs from the instances JSON or COCO-Stuff maps (+ checksum)"),
    "refine": ("refine_cmd", "AffinityNet: train on CAM-seed affinities, or random-walk CAMs into pseudo masks"),
    "train-seg": ("train_seg_cmd", "train DeepLab-v1 ResNet38 on pseudo masks (SGD poly, resumable)"),
    "infer-seg": ("infer_seg_cmd", "multi-scale + flip segmentation, DenseCRF in parallel, PNGs + overlays"),
    "run": ("run_cmd", "the whole pipeline from one config, resumable stage by stage (train-cls ... eval)"),
    "ablate": ("ablate_cmd", "Table-4 DOEI component ablation x seeds: train, CAMs, beta sweep, mean/std table"),
    "sweep": ("sweep_cmd", "one-parameter DOEI sweeps x seeds (st/af/sf, alpha, layers, suppress): JSON + plots"),
    "predict": ("predict_cmd", "masks, legend overlays (and CAMs) for new images from a trained classifier / DeepLab"),
    "compare": ("compare_cmd", "two CAM or mask folders side by side: metrics, per-class differences, gallery, HTML"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="doei",
        description="DOEI and the weakly supervised semantic segmentation pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<12} {h}" for n, (_, h) in COMMANDS.items()),
    )
    p.add_argument("--version", action="version", version=f"doei {doei.__version__}")
    _add_verbosity(p)
    p.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="see below")
    return p


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=None,
                   help="only warnings, errors and results: no progress bars or informational lines")
    g.add_argument("-v", "--verbose", action="store_true", default=None, help="also debug log lines")


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Logger ``doei`` to stderr at WARNING (quiet), INFO (default) or DEBUG (verbose); quiet also turns
    off tqdm progress bars (``TQDM_DISABLE``), for this process and the ones it starts."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    LOG.setLevel(level)
    if not any(getattr(h, "_doei", False) for h in LOG.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._doei = True  # type: ignore[attr-defined]
        LOG.addHandler(h)
        LOG.propagate = False
    _quiet_bars(quiet)


def _quiet_bars(quiet: bool) -> None:
    """-q/--quiet: every progress bar of this process off (also those given ``disable=False`` explicitly) and
    ``TQDM_DISABLE`` for the processes it starts; without it, tqdm as it was."""
    import tqdm.std

    init = tqdm.std.tqdm.__init__
    original = getattr(init, "_doei_original", init)
    if not quiet:
        tqdm.std.tqdm.__init__ = original
        if os.environ.get("TQDM_DISABLE") == "1" and getattr(init, "_doei_original", None) is not None:
            del os.environ["TQDM_DISABLE"]
        return
    os.environ["TQDM_DISABLE"] = "1"

    def quiet_init(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    quiet_init._doei_original = original  # type: ignore[attr-defined]
    tqdm.std.tqdm.__init__ = quiet_init


def _one_line_warnings(name: str, fallback):
    """``warnings.showwarning`` that prints a DoeiWarning as ``doei <name>: warning: ...`` (others as before)."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DoeiWarning):
            print(f"doei {name}: warning: {str(message).strip().splitlines()[0]}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)
    return show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = []                                   # -q / -v given before the verb
    while argv and argv[0] in ("-q", "--quiet", "-v", "--verbose"):
        lead.append(argv.pop(0))
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(lead + (argv[:1] or ["--help"]))
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(f"doei.commands.{module_name}")
    parser = argparse.ArgumentParser(prog=f"doei {name}", description=help_text)
    module.add_arguments(parser)
    for leaf in _leaves(parser):
        _add_verbosity(leaf)
    _formatter_everywhere(parser)
    with warnings.catch_warnings():
        warnings.simplefilter("always", DoeiWarning)
        warnings.showwarning = _one_line_warnings(name, warnings.showwarning)
        args = parser.parse_args(rest)
        quiet = bool(args.quiet) or any(a in ("-q", "--quiet") for a in lead)
        verbose = bool(args.verbose) or any(a in ("-v", "--verbose") for a in lead)
        if quiet and verbose:
            parser.error("-q/--quiet and -v/--verbose exclude each other")
        setup_logging(quiet, verbose)
        try:
            return int(module.run(args) or 0)
        except DoeiError as e:
            print(f"doei {name}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"doei {name}: interrupted", file=sys.stderr)
            return 130


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that take the options: the verb's, or each of its sub-verbs' (``refine train|infer``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for sub in a.choices.values() for leaf in _leaves(sub)]


def _formatter_everywhere(parser: argparse.ArgumentParser) -> None:
    """Every (sub-)parser shows defaults in its help (:class:`doei.utils.cliargs.HelpFormatter`)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _formatter_everywhere(sub)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
