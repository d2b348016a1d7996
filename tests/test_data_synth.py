"""Synthetic benchmark: determinism (byte checksums), VOC-layout round trip, the co-occurrence design."""
from __future__ import annotations

import json

import numpy as np
import pytest

from doei.cli import main
from doei.data import build_dataset
from doei.data.common import classes_in_mask, read_mask
from doei.data.synth import CONTEXTS, SYNTH_CLASSES, SynthParams, read_meta, render_scene, write_synth
from doei.errors import DoeiError

SMALL = SynthParams(seed=3, n_train=24, n_val=8)


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    a = write_synth(tmp_path / "a", SMALL, workers=1)
    b = write_synth(tmp_path / "b", SMALL, workers=2)
    c = write_synth(tmp_path / "c", SynthParams(seed=4, n_train=24, n_val=8), workers=1)
    assert a["checksum_sha256"] == b["checksum_sha256"] != c["checksum_sha256"]
    assert (tmp_path / "a" / "JPEGImages" / "train_000005.png").read_bytes() == \
        (tmp_path / "b" / "JPEGImages" / "train_000005.png").read_bytes()
    with pytest.raises(DoeiError, match="already exists"):
        write_synth(tmp_path / "a", SMALL)


def test_goes_through_the_voc_loader(tmp_path):
    write_synth(tmp_path / "s", SMALL)
    meta = read_meta(tmp_path / "s")
    assert meta["classes"] == list(SYNTH_CLASSES) and meta["splits"] == {"train": 24, "val": 8}
    assert meta["params"]["seed"] == 3 and "small_discriminative_part" in meta["design"]
    for split, n in (("train", 24), ("val", 8)):
        ds = build_dataset("synth", tmp_path / "s", split, require_masks=True)
        assert len(ds) == n and ds.num_classes == 10 and ds.label_source.startswith("file ")
        for i in range(n):
            s = ds.sample(i)
            assert s.image.shape == (64, 64, 3) and s.mask.shape == (64, 64)
            assert s.mask.max() <= 10 and len(s.classes) >= 1
            assert classes_in_mask(s.mask) == s.classes  # labels file == masks
        x, y, iid = ds[0]
        assert x.shape == (3, 64, 64) and iid == f"{split}_000000"
    # the plain VOC loader with labels from masks agrees
    ds = build_dataset("voc", tmp_path / "s", "val", labels="masks", class_names=SYNTH_CLASSES)
    assert [r.classes for r in ds.records] == [r.classes for r in build_dataset("synth", tmp_path / "s", "val").records]
    assert read_mask(tmp_path / "s" / "SegmentationClass" / "val_000000.png", 10).dtype == np.uint8


def test_design_statistics():
    """Context bands accompany their class ~p_context of the time and rarely appear alone."""
    p = SynthParams(seed=11)
    with_cls = {c: [0, 0] for c in CONTEXTS}
    alone = 0
    n_imgs = 250
    per_image = []
    for i in range(n_imgs):
        img, mask, info = render_scene(np.random.default_rng([11, 1, i]), p)
        present = {SYNTH_CLASSES[k] for k in classes_in_mask(mask)}
        per_image.append(len(present))
        for c, band in CONTEXTS.items():
            if c in present:
                with_cls[c][0] += 1
                with_cls[c][1] += info["band"] == band
        if info["band"] is not None and not any(c in present for c in CONTEXTS):
            alone += 1
        assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    for c, (n, hit) in with_cls.items():
        assert n > 25 and hit / n > 0.65, (c, n, hit)  # (boat+train in one image share one band)
    assert alone / n_imgs < 0.15
    assert 1.0 <= np.mean(per_image) <= 3.5


def test_cli_up_to_date_and_conflicts(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--n-train", "6", "--n-val", "2", "--workers", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(args + ["--seed", "1"]) == 2
    assert "other parameters" in capsys.readouterr().err
    assert main(args + ["--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "meta.json").read_text())["params"]["seed"] == 1
    assert first.split("checksum sha256: ")[1].split()[0] != read_meta(out)["checksum_sha256"]
    assert main(["synth", "--out", str(tmp_path / "x"), "--size", "8"]) == 2


@pytest.mark.parametrize("flag, value, needle", [
    ("--seed", "-1", "--seed -1: expected an integer >= 0"),
    ("--max-clutter", "-2", "--max-clutter -2: expected a number of shapes >= 0"),
    ("--noise", "-5", "--noise -5.0: expected a finite pixel-noise std >= 0"),
    ("--noise", "nan", "--noise nan: expected a finite"),
    ("--workers", "0", "--workers 0: expected at least 1 process"),
    ("--n-train", "0", "--n-train 0 / --n-val"),
    ("--size", "16", "--size 16: expected 32..512"),
])
def test_synth_integer_and_noise_options_refused_not_replaced(flag, value, needle, tmp_path, capsys):
    """Values that crashed (negative seed / clutter: NumPy traceback) or were changed silently (workers 0 -> 1,
    NaN noise -> NaN images) are one-line errors, and nothing is written."""
    from doei.cli import main

    assert main(["synth", "--out", str(tmp_path / "s"), "--n-train", "2", "--n-val", "1", "--size", "32",
                 f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("doei synth: error: ") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()
