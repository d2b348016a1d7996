"""The ``doei`` command line: one entry point, one module per sub-command.

Each sub-command lives in ``doei.commands.<module>`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``doei --help`` is
fast and a broken optional dependency affects only the command that needs it.

Errors: a :class:`doei.errors.DoeiError` (bad input) prints one line ``doei <cmd>: error: ...``
to stderr and exits with status 2. A :class:`doei.errors.DoeiWarning` (a setting that can do nothing, an
explicit override) prints one line ``doei <cmd>: warning: ...`` and the command goes on.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from doei.errors import DoeiError, DoeiWarning

# name -> (module under doei.commands, one-line help). Add a line here to add a command.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("eval_cmd", "score seed PNGs or CAM files against ground truth (mIoU, FP, FN, beta sweep)"),
    "cam": ("cam_cmd", "multi-scale CAMs of a split, one .npz per image (+ seed PNGs, CRF labels, overlays)"),
    "train-cls": ("train_cls_cmd", "train the classifier (MCTformer-V2 objective, DOEI on/off) from a YAML config"),
    "demo": ("demo_cmd", "DOEI end to end on the synthetic benchmark: train twice, CAMs, beta sweep, report"),
    "synth": ("synth_cmd", "generate the synthetic WSSS benchmark (VOC layout, deterministic from --seed)"),
    "labels": ("labels_cmd", "write a dataset's image-level labels file once (VOC XML/masks/npy, COCO JSON)"),
    "coco-masks": ("coco_masks_cmd", "rasterise COCO instances JSON into ground-truth PNGs (+ checksum)"),
    "refine": ("refine_cmd", "AffinityNet: train on CAM-seed affinities, or random-walk CAMs into pseudo masks"),
    "train-seg": ("train_seg_cmd", "train DeepLab-v1 ResNet38 on pseudo masks (SGD poly, resumable)"),
    "infer-seg": ("infer_seg_cmd", "multi-scale + flip segmentation, DenseCRF in parallel, PNGs + overlays"),
    "run": ("run_cmd", "the whole pipeline from one config, resumable stage by stage (train-cls ... eval)"),
    "ablate": ("ablate_cmd", "Table-4 DOEI component ablation x seeds: train, CAMs, beta sweep, mean/std table"),
    "sweep": ("sweep_cmd", "one-parameter DOEI sweeps x seeds (st/af/sf, alpha, layers, suppress): JSON + plots"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="doei",
        description="DOEI and the weakly supervised semantic segmentation pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<12} {h}" for n, (_, h) in COMMANDS.items()),
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="see below")
    return p


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
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(f"doei.commands.{module_name}")
    parser = argparse.ArgumentParser(prog=f"doei {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DoeiWarning)
            warnings.showwarning = _one_line_warnings(name, warnings.showwarning)
            return int(module.run(args) or 0)
    except DoeiError as e:
        print(f"doei {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"doei {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
