"""doei compare: two CAM or mask folders side by side (metrics, per-class differences, gallery), as
Markdown + PNG and one self-contained HTML page, checked in a real headless Chromium when installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doei.cam.io import save_cam
from doei.cli import main
from doei.eval.compare import compare_folders, image_miou


def _folders(data: Path, tmp: Path) -> tuple[Path, Path, Path]:
    """A = the true masks with each image's first class dropped to background, B = the true masks eroded by
    one pixel; C = CAMs made from the masks (blurred) - three plausible, different predictions."""
    a, b, c = tmp / "A", tmp / "B", tmp / "C"
    for d in (a, b, c):
        d.mkdir()
    for f in sorted((data / "masks").glob("*.png")):
        m = np.asarray(Image.open(f))
        present = sorted(set(np.unique(m).tolist()) - {0, 255})
        ma = m.copy()
        ma[ma == present[0]] = 0
        ma[ma == 255] = 0
        Image.fromarray(ma).save(a / f.name)
        mb = np.where(m == 255, 0, m).astype(np.uint8)
        edge = (mb != np.roll(mb, 1, 0)) | (mb != np.roll(mb, 1, 1))
        mb[edge] = 0
        Image.fromarray(mb).save(b / f.name)
        cams = []
        for k in present:
            x = (m == k).astype(np.float32)
            pad = np.pad(x, 2, mode="edge")
            cams.append(sum(pad[dy:dy + x.shape[0], dx:dx + x.shape[1]] for dy in range(5) for dx in range(5)) / 25)
        save_cam(c / f"{f.stem}.npz", np.asarray(present, np.int64) - 1, np.stack(cams), dtype=np.float32)
    return a, b, c


def test_compare_with_ground_truth_md_html_json(tiny_run, tmp_path, capsys):
    _, data, _ = tiny_run
    a, b, c = _folders(data, tmp_path)
    out = tmp_path / "cmp"
    argv = ["compare", str(a), str(b), "--dataset", "folder", "--data-root", str(data), "--names", "dropped,eroded",
            "--out", str(out), "--top", "3", "--no-progress"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "dropped: mIoU" in said and "eroded: mIoU" in said and "report.html" in said
    doc = json.loads((out / "compare.json").read_text())
    ra, rb = doc["reports"]
    assert rb["mIoU"] > ra["mIoU"]                                  # eroding hurts less than dropping a class
    assert [r["id"] for r in doc["per_image"]][:3] == doc["gallery"]
    diffs = [abs(r["diff"]) for r in doc["per_image"]]
    assert diffs == sorted(diffs, reverse=True)
    assert all(r["diff"] == pytest.approx(r["b"] - r["a"]) for r in doc["per_class"])
    md = (out / "report.md").read_text()
    assert "| mIoU (%) |" in md and "![per-class differences](per_class.png)" in md
    for i in doc["gallery"]:
        assert f"(gallery/{i}.png)" in md and Image.open(out / "gallery" / f"{i}.png").size[0] >= 5 * 150
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + len(doc["gallery"]) and 'src="gallery/' not in page
    assert main(argv) == 2 and "holds a report already" in capsys.readouterr().err      # nothing replaced unasked
    assert main(argv + ["--overwrite"]) == 0
    # a CAM folder against a mask folder: each at its own best beta
    assert main(["compare", str(c), str(b), "--dataset", "folder", "--data-root", str(data), "--out",
                 str(tmp_path / "cmp2"), "--no-progress"]) == 0
    doc2 = json.loads((tmp_path / "cmp2" / "compare.json").read_text())
    assert doc2["kinds"] == ["cam", "png"] and doc2["betas"][0] is not None and doc2["betas"][1] is None


def test_compare_without_ground_truth_and_bad_input(tiny_run, tmp_path, capsys):
    _, data, _ = tiny_run
    a, b, _ = _folders(data, tmp_path)
    names = (data / "classes.txt").read_text().split()
    cmp = compare_folders(a, a, ["background", *names])
    assert cmp.agreement == 100.0 and all(r["diff"] == 0 for r in cmp.per_image)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--images", str(data / "images"), "--classes", str(data / "classes.txt"),
                 "--out", str(out), "--no-progress"]) == 0
    assert "agree on" in capsys.readouterr().out and (out / "report.html").is_file()
    for extra, needle in ((["--num-classes", "3"], "but the class names count"),
                          (["--names", "x,x"], "two different names")):
        assert main(["compare", str(a), str(b), "--images", str(data / "images"), "--classes",
                     str(data / "classes.txt"), "--out", str(tmp_path / "bad"), *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    assert image_miou(np.array([[1, 0]]), np.array([[1, 255]]), 3) == 100.0


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(page: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *flags, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; "
                                             ".ci/run installs it)")
def test_report_html_in_headless_chromium(tiny_run, tmp_path):
    """The page loads from disk, every image decodes (the page's own load check writes data-images-loaded)
    and the console stays silent; a page with a script error is caught the same way (the check works)."""
    _, data, _ = tiny_run
    a, b, _ = _folders(data, tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--dataset", "folder", "--data-root", str(data), "--out", str(out),
                 "--top", "2", "--no-progress"]) == 0
    run = _chromium(out / "report.html", "--dump-dom")
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', run.stdout)
    assert loaded and loaded.group(1) == loaded.group(2) == "3", run.stdout[-500:]
    console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    shot = tmp_path / "page.png"
    _chromium(out / "report.html", "--window-size=1300,1600", f"--screenshot={shot}")
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (1600, 1300) and px.std() > 20            # a rendered page, not a blank one
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="missing.png"><script>nope()</script></body></html>')
    run = _chromium(bad, "--dump-dom")
    assert any("nope is not defined" in ln for ln in run.stderr.splitlines() if "CONSOLE" in ln)
