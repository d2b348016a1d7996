"""The conventions every verb and the package follow (issue 25): version, the short lazy API, py.typed,
one spelling per flag with help text and defaults, -q/-v through logging, deprecated aliases."""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import doei
from doei import cli
from doei.utils.cliargs import HelpFormatter

SRC = Path(__file__).resolve().parents[1] / "src"


def _parsers():
    for name, (mod, _) in cli.COMMANDS.items():
        p = argparse.ArgumentParser(prog=f"doei {name}")
        importlib.import_module(f"doei.commands.{mod}").add_arguments(p)
        yield name, p


def test_version_and_short_api_are_lazy():
    assert doei.__version__.count(".") == 2
    code = ("import sys, doei; assert 'torch' not in sys.modules, 'import doei pulled in torch'; "
            "print(doei.__version__); f = doei.create_model; assert 'torch' in sys.modules; "
            "print(doei.plug.__module__, doei.AttentionCAM.__name__, doei.load_classifier.__name__, "
            "doei.run_pipeline.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0] == doei.__version__ and out[1] == "doei.models.timm_plugin"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        doei.nope  # noqa: B018
    assert (SRC / "doei" / "py.typed").is_file()
    assert re.search(r'doei = \[[^]]*"py.typed"', (SRC.parent / "pyproject.toml").read_text())


def test_doei_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"doei {doei.__version__}"


def test_every_flag_has_help_and_one_spelling():
    seen: dict[str, set[str]] = {}
    for name, p in _parsers():
        for leaf in cli._leaves(p):
            for a in leaf._actions:
                if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                    continue
                assert a.help, f"doei {name}: {a.option_strings or a.dest} has no help text"
                for o in a.option_strings:
                    seen.setdefault(o, set()).add(name)
    for old in ("--root", "--no-progress-bar", "--force", "--gpu", "--data-dir", "--dataset-root"):
        assert old not in seen, f"{old} on {seen.get(old)}: the shared spelling is used everywhere"
    for verb in ("train-cls", "train-seg", "refine", "infer-seg", "run", "cam", "predict"):
        flags = {o for leaf in cli._leaves(dict(_parsers())[verb]) for a in leaf._actions for o in a.option_strings}
        assert {"--device", "--no-progress", "--data-root"} <= flags, verb


def test_help_shows_defaults():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=3, help="how many")
    p.add_argument("--m", type=int, default=4, help="how many (default 4)")
    text = p.format_help()
    assert "how many (default: 3)" in text and "(default 4)" in text and "(default: 4)" not in text


def test_refine_sub_verbs_have_their_own_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["refine", "train", "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "--limit" not in out and "Train AffinityNet" in out


def test_labels_root_is_a_deprecated_alias(tmp_path, capsys):
    voc = tmp_path / "VOC"
    assert cli.main(["labels", "--dataset", "voc", "--root", str(voc)]) == 2      # parsed as --data-root
    err = capsys.readouterr().err
    assert "warning: --root is deprecated; use --data-root" in err and str(voc) in err


def test_quiet_and_verbose_set_the_logging_level(tmp_path):
    import logging

    for flags, level in ((["-q"], logging.WARNING), ([], logging.INFO), (["--verbose"], logging.DEBUG)):
        cli.main([*flags, "synth", "--out", str(tmp_path / "s"), "--n-train", "2", "--n-val", "1", "--size", "32",
                  "--workers", "1"])
        assert logging.getLogger("doei").level == level
    with pytest.raises(SystemExit):
        cli.main(["synth", "-q", "-v", "--out", str(tmp_path / "s")])


def test_cam_says_once_when_it_reads_unlike_training(tiny_run, tmp_path, capsys):
    """doei cam warns (one line each) when the CAM views are far from the training size, and when
    patch-affinity refinement is on by default for a classifier trained from scratch."""
    _, data, ckpt = tiny_run
    base = ["cam", "--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(data), "--split", "val",
            "--n-layers", "2", "--limit", "1", "--no-progress"]
    assert cli.main(base + ["--out", str(tmp_path / "a"), "--scales", "3.0"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 2 and "trained on 64-px crops" in err[0] and "--no-patch-refine" in err[1], err
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--no-patch-refine"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_train_cls_takes_a_timm_model_by_name(tiny_run, tmp_path, capsys):
    """model.name timm:<name>: TS-CAM's head on that timm ViT with DOEI through the plug-in; trained by
    doei train-cls, rebuilt by the one loader from its checkpoint, CAMs by doei cam; a bad name is one line."""
    import tiny_run as tr

    from doei.engine.classifier import load_classifier

    _, data, _ = tiny_run
    sets = [s for s in tr.TINY_CLS if not s.startswith(("model.name", "model.options"))]
    sets += ["model.name=timm:deit_tiny_patch16_224", "model.options={depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8}",
             f"train.out_dir={tmp_path / 'cls'}"]
    argv = ["train-cls", "--config", str(tr.REPO / "configs" / "folder_example.yaml"), "--data-root", str(data),
            "--no-progress", *[a for s in sets for a in ("--set", s)]]
    assert cli.main(argv) == 0
    model, spec = load_classifier(tmp_path / "cls" / "checkpoint.pt")
    assert spec.name == "timm:deit_tiny_patch16_224" and model.family == "tscam_timm" and model.depth == 2
    assert repr(model.trunk.doei_plug).startswith("DoeiPlug(VisionTransformer, 2 blocks, patch 8")
    assert cli.main(["cam", "--checkpoint", str(tmp_path / "cls" / "checkpoint.pt"), "--dataset", "folder",
                     "--data-root", str(data), "--split", "val", "--limit", "1", "--out", str(tmp_path / "cams"),
                     "--no-progress"]) == 0
    assert len(list((tmp_path / "cams").glob("*.npz"))) == 1
    capsys.readouterr()
    bad = argv[:-2] + ["--set", f"train.out_dir={tmp_path / 'bad'}", "--set", "model.name=timm:no_such_vit"]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "timm cannot build it" in err
    assert not any((tmp_path / "bad").glob("*"))                       # nothing written (train-cls makes the folder)


def test_cam_says_when_images_have_no_label(tiny_run, tmp_path, capsys):
    _, data, ckpt = tiny_run
    mine = tmp_path / "mydata"
    mine.mkdir()
    for name in ("images", "masks", "classes.txt", "val.txt"):
        (mine / name).symlink_to(data / name)
    first = (data / "val.txt").read_text().split()[0]
    rows = [(ln.split(",")[0] + ",") if ln.startswith(first) else ln for ln in (data / "labels.csv").read_text().splitlines()]
    (mine / "labels.csv").write_text("\n".join(rows) + "\n")
    assert cli.main(["cam", "--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(mine), "--split", "val",
                     "--n-layers", "2", "--limit", "1", "--no-progress", "--no-patch-refine",
                     "--out", str(tmp_path / "c")]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and f"1 image(s) have no image-level label (e.g. {first})" in err[0] and "doei predict" in err[0]
