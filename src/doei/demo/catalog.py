"""What the demo shows: its two runs (DOEI off/on), the classifiers it can train, and the trivial references."""
from __future__ import annotations

RUNS = ("baseline", "doei")
# --model -> (display name, config file per mode, CAM patch refinement by default). TS-CAM has no refinement
# (its map is cls attention x head map); TransCAM's CAM IS the patch-to-patch refined conv map, so it is on;
# MCTformer's is off (it smears the small model's CAMs onto background, docs/demo.md).
MODELS = {
    "mctformer": ("MCTformer-V2", {"default": "demo.yaml", "quick": "demo_quick.yaml"}, False),
    "tscam": ("TS-CAM", {"default": "demo_tscam.yaml", "quick": "demo_tscam_quick.yaml"}, False),
    "transcam": ("TransCAM", {"default": "demo_transcam.yaml", "quick": "demo_transcam_quick.yaml"}, True),
}
REFERENCES = ("all_background", "uniform_cam")
# metrics.json "timings": wall and CPU seconds per stage, under these keys (in run order), and "total"
TIMED_STAGES = {"benchmark": "synthetic benchmark", "training": "training baseline (DOEI off) and doei (DOEI on)",
          "cams": "CAMs of the held-out split", "evaluation": "evaluation (beta sweep)",
          "pipeline_benchmark": "pipeline benchmark", "pipeline": "pipeline baseline and doei",
          "ceilings": "pipeline ceilings", "report": "figures and report"}
