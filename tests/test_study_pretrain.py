"""Issue #24, the pretrained regime: the pretraining corpus (doei.data.pretrain_corpus) and the pretrain path
(doei.study.pretrain): corpus → classifier → CAMs on the corpus → trunk file → fine-tuning via model.pretrained."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from doei.data.pretrain_corpus import CORPUS_CLASSES, CorpusParams, ensure_corpus, render_corpus_scene
from doei.data.synth import SYNTH_CLASSES
from doei.errors import DoeiError


def test_corpus_differs_from_the_benchmark_and_is_multilabel_and_seeded():
    assert len(CORPUS_CLASSES) == 16 and not set(CORPUS_CLASSES) & set(SYNTH_CLASSES)
    p = CorpusParams(n_train=4, n_val=1)
    counts, seen = [], set()
    for i in range(40):
        img, mask, info = render_corpus_scene(np.random.default_rng([0, 1, i]), p)
        labels = set(np.unique(mask).tolist()) - {0}
        assert labels == {CORPUS_CLASSES.index(n) + 1 for n in info["placed"]}
        counts.append(len(labels))
        seen |= labels
    assert max(counts) >= 3 and min(counts) >= 1 and len(seen) >= 12           # multi-label, classes spread
    a = render_corpus_scene(np.random.default_rng([0, 1, 7]), p)
    b = render_corpus_scene(np.random.default_rng([0, 1, 7]), p)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(DoeiError, match="corpus.size"):
        CorpusParams(size=8).validate()


def test_pretrain_quick_end_to_end(tmp_path):
    from doei.models.pretrained import load_deit_weights
    from doei.models.registry import create_model
    from doei.study.pretrain import main, pretrain

    quick = ["corpus.n_train=24", "corpus.n_val=6", "train.epochs=1", "train.batch_size=12",
             "train.progress=false", "train.eval_every=1", "pretrain.cam_batch=6", "pretrain.betas=0.1:0.9:0.4",
             "model.options.depth=2", "model.options.embed_dim=32", "model.options.num_heads=2"]
    out = tmp_path / "pt"
    rec = pretrain("configs/pretrained/pretrain.yaml", out, quick, log=lambda s: None)
    assert rec["classes"] == list(CORPUS_CLASSES) and rec["steps"] == 2
    assert set(rec["corpus_cams"]) == {"mIoU", "FP", "FN", "beta"} and set(rec["corpus_references"]) == {
        "all_background", "uniform_cam"} and rec["trunk"]["pretrained_classes"] == 16
    trunk = torch.load(out / "trunk.pt", weights_only=True)["model"]
    assert trunk["cls_token"].shape == (1, 1, 32) and not any(k.startswith("head.") for k in trunk)
    # cached: the same settings are reused without training; other settings are refused
    assert pretrain("configs/pretrained/pretrain.yaml", out, quick, log=lambda s: None)["fingerprint"] == rec["fingerprint"]
    assert main(["--config", "configs/pretrained/pretrain.yaml", "--out", str(out),
                 *sum((["--set", q] for q in quick), []), "--set", "train.epochs=2"]) == 2
    # fine-tuning: a 10-class model starts from the trunk (class token repeated per class, as from DeiT)
    m = create_model("mctformer_v2_tiny_conv", num_classes=10, img_size=64, depth=2, embed_dim=32, num_heads=2)
    left = load_deit_weights(m, out / "trunk.pt")
    assert left and all(k.startswith("head.") for k in left)
    # ... through the training config's model.pretrained, as the fine-tuning studies do
    from doei.config import apply_overrides, load_yaml
    from doei.engine.classifier import build_classifier
    from doei.train_config import train_config_from_dict

    d = load_yaml("configs/pretrained/finetune_controls.yaml")
    d.pop("study")
    d = apply_overrides(d, [f"model.pretrained={out / 'trunk.pt'}", "data.root=unset", "train.out_dir=unset",
                            "model.options.depth=2", "model.options.embed_dim=32", "model.options.num_heads=2"])
    sd = build_classifier(train_config_from_dict(d)).state_dict()
    assert sd["cls_token"].shape == (1, 10, 32)
    assert torch.equal(sd["blocks.1.attn.qkv.weight"], trunk["blocks.1.attn.qkv.weight"])
    assert torch.equal(sd["cls_token"][:, 3], trunk["cls_token"][:, 0])
    assert torch.equal(sd["patch_embed.stem.1.running_mean"], trunk["patch_embed.stem.1.running_mean"])


def test_finetune_configs_start_from_the_trunk():
    from doei.config import load_yaml

    for name, bias in (("finetune_controls", None), ("finetune_controls_bias100", 1.0)):
        d = load_yaml(f"configs/pretrained/{name}.yaml")
        assert d["model"]["pretrained"] == "study24/pretrain/trunk.pt" and d["study"]["bias"] == bias
        assert {"random_select", "uniform_scores", "no_last_block", "read_hfa_additive"} <= set(d["study"]["rows"])
    assert json.dumps(load_yaml("configs/pretrained/pretrain.yaml")["doei"]) == "{}"
