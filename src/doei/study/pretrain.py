"""The pretrained regime (issue #24): the study's small ViT trained long on a different corpus, its trunk cached
as a file that ``model.pretrained`` fine-tunes from.

No pretrained ViT weights can be downloaded here, and every from-scratch study trains a 4-block ViT for ~94
steps, whose attention has no prior. This command makes the prior on the CPU, once:

1. generate the pretraining corpus (:mod:`doei.data.pretrain_corpus`: 16 shape × texture classes, multi-label,
   none of the benchmark's classes or context bands) at ``OUT/corpus-<hash>``;
2. train the config's classifier on it (DOEI off; resumable, ``OUT/train``);
3. check that it localises objects ON THE CORPUS: CAMs of the corpus's held-out split scored against its masks
   (mIoU / FP / FN at the best β), beside the classifier's mAP and the trivial references scored the same way
   (all background; each labelled class uniform over the image);
4. write the trunk ``OUT/trunk.pt`` in DeiT form (``cls_token`` [1, 1, D] = the mean of the pretrained class
   tokens, ``pos_embed`` with one class position, ``head.*`` dropped), which :func:`doei.models.pretrained.
   load_deit_weights` loads into a model with any number of classes (the class token repeated per class, as
   MCTformer starts from DeiT); and ``OUT/pretrain.json`` (settings, numbers, wall time, the trunk's sha256).

A finished ``OUT`` with the same settings is reused (the trunk is cached); other settings are refused.

    python -m doei.study.pretrain --config configs/pretrained/pretrain.yaml --out study24/pretrain
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from doei.config import apply_overrides, from_dict, load_yaml
from doei.data.pretrain_corpus import CorpusParams, ensure_corpus
from doei.errors import DoeiError
from doei.utils.io import atomic_path, atomic_write_json

PRETRAIN_DEFAULTS = {"cam_layers": 3, "betas": "0.05:0.95:0.05", "cam_batch": 50}
TRUNK_FORMAT = "doei-trunk-v1"


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> tuple[CorpusParams, dict, dict]:
    """``(corpus params, pretrain options, training dict)`` of a pretraining config: sections ``corpus``
    (:class:`CorpusParams` fields), ``pretrain`` (``cam_layers``, ``betas``, ``cam_batch``) and a TrainConfig."""
    from doei.train_config import train_config_from_dict

    data = apply_overrides(load_yaml(path), overrides or [])
    corpus_d = data.pop("corpus", None)
    opts = data.pop("pretrain", {}) or {}
    if not isinstance(corpus_d, dict):
        raise DoeiError(f"{path}: expected a 'corpus' section (fields {[f.name for f in fields(CorpusParams)]})")
    if "scale" in corpus_d:
        corpus_d = {**corpus_d, "scale": tuple(corpus_d["scale"])}
    corpus = from_dict(CorpusParams, corpus_d, where=f"{path}: corpus").validate()
    unknown = set(opts) - set(PRETRAIN_DEFAULTS)
    if unknown:
        raise DoeiError(f"{path}: pretrain: unknown key(s) {sorted(unknown)}; expected some of {sorted(PRETRAIN_DEFAULTS)}")
    opts = {**PRETRAIN_DEFAULTS, **opts}
    if data.get("doei", {}).get("enabled"):
        raise DoeiError(f"{path}: doei.enabled is true; the trunk is pretrained without DOEI (leave the doei section empty)")
    d = copy.deepcopy(data)
    d.setdefault("data", {})["kind"] = "synth"
    d["data"]["root"] = "unset"
    d.setdefault("train", {})["out_dir"] = "unset"
    train_config_from_dict(d, where=str(path))          # checked now, before any work
    return corpus, opts, data


def _fingerprint(corpus: CorpusParams, opts: dict, train_dict: dict) -> str:
    blob = json.dumps({"corpus": asdict(corpus), "pretrain": opts, "train": train_dict}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def export_trunk(checkpoint: Path, out: Path) -> dict:
    """Write the trunk of the classifier ``checkpoint`` to ``out`` in DeiT form; returns {sha256, keys, classes}."""
    from doei.engine.classifier import load_classifier

    model, _ = load_classifier(checkpoint)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    n = int(model.num_cls_tokens)
    sd["cls_token"] = sd["cls_token"].mean(dim=1, keepdim=True)
    pos = sd["pos_embed"]
    sd["pos_embed"] = torch.cat([pos[:, :n].mean(dim=1, keepdim=True), pos[:, n:]], dim=1)
    with atomic_path(out) as tmp:
        torch.save({"model": sd, "format": TRUNK_FORMAT, "pretrained_classes": n, "source": str(checkpoint)}, tmp)
    return {"sha256": hashlib.sha256(Path(out).read_bytes()).hexdigest(), "keys": len(sd), "pretrained_classes": n}


def pretrain(config: str | Path, out: str | Path, overrides: list[str] | None = None, workers: int = 1,
             log=print) -> dict:
    """Steps 1-4 of the module docstring; returns (and writes) ``OUT/pretrain.json``."""
    from doei.cam.heldout import evaluate_cams, write_cams, write_reference_cams
    from doei.engine.train_cls import train
    from doei.train_config import train_config_from_dict

    corpus, opts, data = load_pretrain_config(config, overrides)
    out = Path(out)
    fp = _fingerprint(corpus, opts, data)
    rec_path = out / "pretrain.json"
    if rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        if rec.get("fingerprint") != fp:
            raise DoeiError(f"{rec_path}: a pretraining with other settings is there (fingerprint {rec.get('fingerprint')} "
                            f"vs {fp}); use another --out")
        if (out / "trunk.pt").is_file():
            log(f"reusing the trunk {out / 'trunk.pt'} (pretrained {rec['wall_s']['total']:.0f} s)")
            return rec
    t0 = time.time()
    root = out / f"corpus-{hashlib.sha256(json.dumps(asdict(corpus), default=list).encode()).hexdigest()[:8]}"
    meta = ensure_corpus(root, corpus, workers=workers)
    t1 = time.time()
    d = copy.deepcopy(data)
    d.setdefault("data", {}).update(kind="synth", root=str(root))
    d.setdefault("train", {})["out_dir"] = str(out / "train")
    d.setdefault("model", {})["num_classes"] = len(meta["classes"])
    cfg = train_config_from_dict(d, where=str(config))
    tr = train(cfg, resume="auto", log=log)
    t2 = time.time()
    names = list(meta["classes"])
    ids = write_cams(tr.checkpoint, root, out / "cams", int(opts["cam_layers"]), batch=int(opts["cam_batch"]))
    ev = evaluate_cams(out / "cams", root, ids, names, opts["betas"], context=False)
    write_reference_cams(root, out / "reference_cams")      # what "localises" must beat: no CAM, a uniform CAM
    refs = {r: {k: v for k, v in evaluate_cams(out / "reference_cams" / r, root, ids, names, opts["betas"],
                                               context=False).items() if k in ("mIoU", "FP", "FN", "beta")}
            for r in ("all_background", "uniform_cam")}
    trunk = export_trunk(tr.checkpoint, out / "trunk.pt")
    t3 = time.time()
    rec = {"fingerprint": fp, "config": str(config), "overrides": list(overrides or []), "corpus": asdict(corpus),
           "corpus_root": str(root), "classes": names, "train": cfg.to_dict(),
           "steps": (tr.final or {}).get("step"), "classifier": {k: v for k, v in (tr.final or {}).items()
                                                                  if k.startswith("val_")},
           "corpus_cams": {k: ev[k] for k in ("mIoU", "FP", "FN", "beta")},
           "corpus_references": refs, "trunk": {"path": str(out / "trunk.pt"), **trunk},
           "wall_s": {"corpus": round(t1 - t0, 1), "train": round(t2 - t1, 1), "cams_and_trunk": round(t3 - t2, 1),
                      "total": round(t3 - t0, 1)}, "threads": torch.get_num_threads()}
    atomic_write_json(rec_path, rec)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m doei.study.pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="a pretraining config (configs/pretrained/pretrain.yaml)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (corpus, training, cams, trunk.pt)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    ap.add_argument("--workers", type=int, default=1, help="processes generating the corpus (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        rec = pretrain(a.config, a.out, a.overrides, workers=a.workers)
    except DoeiError as e:
        print(f"error: {e}")
        return 2
    c = rec["corpus_cams"]
    r = rec["corpus_references"]
    print(f"trunk {rec['trunk']['path']}: corpus CAM mIoU {c['mIoU']:.1f} (FP {c['FP']:.1f}, FN {c['FN']:.1f}, "
          f"beta {c['beta']:.2f}; references: all background {r['all_background']['mIoU']:.1f}, uniform CAM "
          f"{r['uniform_cam']['mIoU']:.1f}), classifier mAP {rec['classifier'].get('val_mAP', float('nan')):.1f}, "
          f"{rec['wall_s']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
