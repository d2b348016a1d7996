"""docs/your-data.md end to end: its five commands run as written (the block marked "run as written by
tests/test_your_data.py") on real photos in the folder layout (tests/tiny_run.py), and every promised
output exists: the score table, pseudo masks and overlays, CAM pictures, predictions, the compare report."""
from __future__ import annotations

import json
import subprocess

import numpy as np
from PIL import Image

from test_docs import REPO, _env, blocks, sandbox

PAGE = REPO / "docs" / "your-data.md"


def test_your_data_five_commands(tiny_run, tmp_path_factory):
    todo = [b for b in blocks(PAGE) if b.marker == "skip" and b.reason.startswith("run as written by tests/test_your_data.py")]
    assert len(todo) == 1 and todo[0].lang == "bash"
    box = sandbox(PAGE, tiny_run, tmp_path_factory)
    (box / "steps.sh").write_text(todo[0].code + "\n")
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "steps.sh"], cwd=box, env=_env(box), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = box / "runs" / "mydata_quick"
    table = json.loads((run / "eval.json").read_text())["table"]
    assert [r["stage"] for r in table] == ["Seed", "Mask", "Seg"]
    assert proc.stdout.count("stage    split") == 1                        # doei run prints its table once
    data = box / "mydata"
    train = (data / "train.txt").read_text().split()
    val = (data / "val.txt").read_text().split()
    for i in train:
        assert (run / "pseudo" / f"{i}.png").is_file() and (run / "pseudo" / "overlay" / f"{i}.png").is_file()
    for i in val:
        assert (run / "seg_pred" / "overlay" / f"{i}.png").is_file()
        assert (run / "cams_val" / "overlays" / f"{i}.png").is_file()
    assert json.loads((run / "cams_val_metrics.json").read_text())["num_classes"] == 21
    rows = (box / "predictions" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",predicted," in r for r in rows[1:])
    for r in rows[1:]:
        i = r.split(",")[0]
        m = np.asarray(Image.open(box / "predictions" / "masks" / f"{i}.png"))
        assert m.shape == np.asarray(Image.open(box / "new_photos" / f"{i}.jpg")).shape[:2]
    settings = json.loads((box / "predictions" / "predict_settings.json").read_text())
    assert settings["seg_checkpoint"] and settings["classifier"]          # the run's DeepLab and classifier
    page = (run / "compare" / "report.html").read_text()
    assert "seeds" in page and "pseudo" in page and "data:image/png;base64," in page
