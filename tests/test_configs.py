"""Every YAML file under configs/ loads and validates with strict keys (no dataset or weights needed).

Kinds: a pipeline config (``doei run``; sections run/classifier/cam/refine/seg/eval) is built with
:func:`doei.pipeline_config.load_pipeline_config` and its classifier and CAM sections are expanded
and validated as ``doei run`` does; a study config (``study`` section) goes through the study
runner's loader (a pipeline config with a ``study`` section is a study); anything else is a classifier
TrainConfig. configs/paper/ must hold the 12 paper experiments (VOC, COCO × MCTformer-V2, TS-CAM, TransCAM
× without/with DOEI), besides the Table-4 / Fig. 4 study configs (``ablate_*``, ``sweep_*``).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from doei.errors import DoeiError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))
PIPELINE_KEYS = {"run", "classifier", "cam", "refine", "seg", "eval"}
STUDIES = ("ablate_", "sweep_")   # configs/paper/ablate_*/sweep_*: Table 4 / Fig. 4 (tests/test_study_pipeline.py)
PAPER = [f"{ds}_{m}{s}" for ds in ("voc", "coco") for m in ("mctformer_v2", "tscam", "transcam") for s in ("", "_doei")]


def _validate(path: Path, tmp_path: Path) -> str:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    if "corpus" in data:          # a pretraining config (doei.study.pretrain, issue #24)
        from doei.study.pretrain import load_pretrain_config

        load_pretrain_config(path)
        return "pretrain"
    if "study" in data:           # a study: the synthetic benchmark's or a pipeline config's (doei.study)
        from doei.study.runner import load_study

        load_study(path, tmp_path / "study")
        return "study"
    if PIPELINE_KEYS & set(data):
        from doei.pipeline import cam_config, classifier_config
        from doei.pipeline_config import load_pipeline_config

        cfg = load_pipeline_config(path)
        tcfg = classifier_config(cfg)
        cam_config(cfg)
        return "pipeline"
    from doei.train_config import load_train_config

    load_train_config(path)
    return "train"


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_every_config_validates(path, tmp_path):
    assert _validate(path, tmp_path) in ("pipeline", "study", "train", "pretrain")


def test_paper_configs_are_complete_and_consistent():
    from doei.pipeline import classifier_config
    from doei.pipeline_config import STAGES, load_pipeline_config

    found = sorted(p.stem for p in (CONFIGS / "paper").glob("*.yaml") if not p.stem.startswith(STUDIES))
    assert found == sorted(PAPER)
    for name in PAPER:
        cfg = load_pipeline_config(CONFIGS / "paper" / f"{name}.yaml")
        tcfg = classifier_config(cfg)
        assert cfg.run.stages == list(STAGES)                                  # all stages
        assert cfg.data.num_classes == (20 if name.startswith("voc") else 80)
        assert tcfg.model.num_classes == cfg.data.num_classes
        assert tcfg.doei.enabled == name.endswith("_doei")
        expected_model = {"mctformer_v2": "mctformer_v2_deit_small", "tscam": "tscam_deit_small",
                          "transcam": "transcam_conformer_small"}[name.split("_", 1)[1].removesuffix("_doei")]
        assert tcfg.model.name == expected_model
        if "transcam" in name:                                                 # TransCAM's own recipe
            assert (tcfg.train.batch_size, tcfg.train.epochs, tcfg.peak_lr()) == (8, 20, 5e-5)
        else:                                                                  # MCTformer's recipe
            assert (tcfg.train.batch_size, tcfg.train.epochs, tcfg.model.img_size) == (64, 60, 224)
            assert tcfg.peak_lr() == pytest.approx(5e-4 * 64 / 512)
        # with and without DOEI differ in the doei section and the output folder only
        if name.endswith("_doei"):
            base = yaml.safe_load((CONFIGS / "paper" / f"{name[:-5]}.yaml").read_text())
            this = yaml.safe_load((CONFIGS / "paper" / f"{name}.yaml").read_text())
            base["classifier"].pop("doei"), this["classifier"].pop("doei")
            base["run"].pop("out_dir"), this["run"].pop("out_dir")
            assert base == this, name


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["classifier"]["optim"].__setitem__("lrr", 1e-3), "lrr"),            # mistyped key
    (lambda d: d["seg"]["train"].__setitem__("epoch", 3), "epoch"),
    (lambda d: d.__setitem__("sed", 1), "sed"),                                      # unknown section
    (lambda d: d["cam"].__setitem__("scale", [1.0]), "scale"),
    (lambda d: d["classifier"]["train"].__setitem__("batch_size", "64"), "batch_size"),  # wrong type
])
def test_strict_keys_are_enforced(tmp_path, edit, key):
    data = yaml.safe_load((CONFIGS / "paper" / "voc_mctformer_v2.yaml").read_text())
    edit(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DoeiError, match=key) as e:
        _validate(bad, tmp_path)
    assert "\n" not in str(e.value)
