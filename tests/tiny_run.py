"""A user's own photos in the documented folder layout, and one tiny classifier trained on them (shared by
tests/test_predict.py, tests/test_your_data.py and tests/test_docs.py through conftest's session fixture).

The photos are the first 16 of the real VOC sample in ``../shared/data/voc_real_mini`` when present (down-scaled
to 96 px on the longer side so a test trains in seconds), else 12 made-up "photos" (smooth noise + two kinds of
shapes, labelled with the first two VOC classes so that the configs' 20 classes hold).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIDE = 96
N_PHOTOS = 16          # of the 38 VOC photos: enough for every stage, small enough for seconds per stage
# configs/folder_example.yaml / folder_pipeline.yaml shrunk for a CPU test: a 2-block conv-stem MCTformer-V2
# from scratch, 1 epoch (the point is the path, not the numbers)
TINY_CLS = ["model.name=mctformer_v2_tiny_conv", "model.img_size=64", "model.pretrained=null",
            "model.options={depth: 2, embed_dim: 48, num_heads: 2}", "data.transform=simple",
            "optim.lr_batch_base=null", "optim.warmup_epochs=0", "train.epochs=1", "train.batch_size=8",
            "train.amp=false", "train.device=cpu", "train.eval_every=1"]


def make_folder_data(root: Path, shared: Path | None) -> Path:
    """``root/mydata``: images/, classes.txt, labels.csv, masks/, train.txt, val.txt (docs/datasets.md)."""
    out = root / "mydata"
    if (out / "labels.csv").is_file():
        return out
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    voc = shared / "data" / "voc_real_mini" if shared is not None else None
    if voc is not None and (voc / "JPEGImages").is_dir():
        from doei.data.voc import VOC_CLASSES

        names = list(VOC_CLASSES)
        ids = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))[:N_PHOTOS]
        for i in ids:
            img = Image.open(voc / "JPEGImages" / f"{i}.jpg").convert("RGB")
            mask = Image.open(voc / "SegmentationClassAug" / f"{i}.png")
            s = SIDE / max(img.size)
            size = (round(img.size[0] * s), round(img.size[1] * s))
            img.resize(size, Image.BICUBIC).save(out / "images" / f"{i}.jpg", quality=92)
            mask.resize(size, Image.NEAREST).save(out / "masks" / f"{i}.png")
    else:
        from doei.data.voc import VOC_CLASSES

        names = list(VOC_CLASSES)             # the configs' 20 classes; the made-up photos use the first two
        rng = np.random.default_rng(0)
        ids = [f"photo_{n:02d}" for n in range(12)]
        for n, i in enumerate(ids):
            h, w = 72, SIDE
            base = rng.normal(120, 30, (h // 8 + 1, w // 8 + 1, 3))
            img = np.asarray(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC))
            img = img.copy()
            mask = np.zeros((h, w), np.uint8)
            yy, xx = np.mgrid[:h, :w]
            if n % 3 != 1:
                cy, cx = rng.integers(20, 52), rng.integers(20, 40)
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 14 ** 2
                img[disc], mask[disc] = (220, 60, 40), 1
            if n % 3 != 0:
                y0, x0 = rng.integers(8, 40), rng.integers(50, 70)
                img[y0:y0 + 22, x0:x0 + 22], mask[y0:y0 + 22, x0:x0 + 22] = (40, 80, 220), 2
            Image.fromarray(img).save(out / "images" / f"{i}.jpg", quality=92)
            Image.fromarray(mask).save(out / "masks" / f"{i}.png")
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    rows = ["id,labels"]
    for i in ids:
        present = sorted(set(np.unique(np.asarray(Image.open(out / "masks" / f"{i}.png"))).tolist()) - {0, 255})
        rows.append(f"{i}.jpg,{';'.join(names[k - 1] for k in present)}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    n_val = max(2, len(ids) // 4)
    (out / "train.txt").write_text("\n".join(ids[n_val:]) + "\n")
    (out / "val.txt").write_text("\n".join(ids[:n_val]) + "\n")
    return out


def doei(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``doei ARGS`` in a subprocess (as a user types it), from ``cwd``."""
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "OMP_NUM_THREADS": "2", "HOME": str(cwd)}
    proc = subprocess.run([sys.executable, "-m", "doei.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"doei {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def train_tiny_classifier(work: Path, data: Path) -> Path:
    """``doei train-cls --config configs/folder_example.yaml`` shrunk (TINY_CLS); returns the checkpoint."""
    out = work / "runs" / "cls"
    ckpt = out / "checkpoint.pt"
    if not ckpt.is_file():
        sets = [a for s in TINY_CLS + [f"train.out_dir={out}"] for a in ("--set", s)]
        doei("train-cls", "--config", str(REPO / "configs" / "folder_example.yaml"), "--data-root", str(data),
             "--no-progress", *sets, cwd=work)
    return ckpt
