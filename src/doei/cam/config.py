"""Settings of ``doei cam`` as a strict dataclass (YAML keys = field names; unknown keys are errors).

Example ``cam.yaml``::

    model: mctformer_v2_deit_small
    num_classes: 20
    dataset: voc
    data_root: data/VOCdevkit/VOC2012
    split: train
    scales: [1.0]            # MCTformer's psa run; its --scales option takes e.g. [1.0, 0.5, 1.5]
    crf_alphas: [1, 12]      # PSA affinity labels (low/high background exponent)

Command-line flags override the file; the file overrides the defaults below (the official MCTformer-V2
settings: scale 1.0 + flip; the CAM kind and options default to the model's own: for MCTformer-V2 the
last 3 blocks, fused maps, patch-affinity refinement). With a doei
training checkpoint the model keys (``model``, ``num_classes``, ``model_kwargs``, ``doei``) can be left
out: the network is rebuilt from the checkpoint (:func:`doei.engine.classifier.load_classifier`).
Official weights can be run with DOEI by giving a ``doei:`` section (``enabled: true`` + knobs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from doei.core import DOEIConfig
from doei.data.build import DatasetKind
from doei.errors import DoeiError


@dataclass
class CamConfig:
    # model. A doei training checkpoint records its network: leave these unset (None / {}) and it is
    # rebuilt as trained; values given must agree with it. An external weights file (official
    # checkpoints, a state dict) is built from them (model default mctformer_v2_deit_small,
    # num_classes default the dataset's, DOEI off unless a doei section is given).
    model: Optional[str] = None
    num_classes: Optional[int] = None
    model_kwargs: dict = field(default_factory=dict)   # extra factory arguments (depth, embed_dim, ...)
    doei: Optional[DOEIConfig] = None                  # DOEI settings (None = the checkpoint's; external: off)
    override_doei: bool = False                        # run a training checkpoint with other DOEI settings
    # data
    dataset: DatasetKind = "voc"          # a registered kind (doei.data.build.dataset_kinds)
    data_root: str = ""
    split: str = "train"
    # the loader's declared options (mask_dir, labels_file, image_dir, ...): any key this config does not know
    # lands here (``--set mask_dir=...``) and is checked against the dataset kind (doei.data.build)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # CAM pipeline
    scales: list[float] = field(default_factory=lambda: [1.0])
    # TransCAM's views (infer_TransCAM.py): the image resized to these squares, e.g. [256, 512, 768], instead of
    # `scales` (empty = `scales`); needed by the Conformer, whose input sides must be multiples of 16
    square_sizes: list[int] = field(default_factory=list)
    flip: bool = True
    # the model's CAM kind and options (doei.models.cam_source): None = its default; a kind it lacks or an
    # option it does not read is refused when the model is known; the settings file records the resolved values
    # (None for an option the family does not read). MCTformer-V2: fused|patchcam|mtatt, n_layers 3,
    # patch_refine on; TS-CAM: semantic, no options; TransCAM: transcam|clsattn|attnagg|convcam, patch_refine on
    kind: Optional[str] = None
    n_layers: Optional[int] = None
    patch_refine: Optional[bool] = None
    amp: bool = False
    # "official": per-class min-max of the summed views (MCTformer); "relu_minmax": the raw sum, then ReLU and
    # per-class min-max (TransCAM's "minmax": its conv maps can be hugely negative) — the demo's read-out
    normalize: Literal["official", "relu_minmax"] = "official"
    # outputs
    cam_dtype: Literal["float16", "float32"] = "float16"
    save_seeds: bool = False
    seed_beta: float = 0.4
    crf_alphas: list[float] = field(default_factory=list)
    crf_image: Literal["official", "original"] = "official"
    save_overlays: bool = False
    # running
    device: str = "auto"                  # auto = cuda when available, else cpu (amp: fp16 on CUDA, bf16 on CPU)
    batch_size: int = 1
    num_workers: int = 0

    EXTRA_KEYS: ClassVar[str] = "dataset_options"   # unknown keys are dataset options (doei.config.from_dict)

    def validate(self) -> "CamConfig":
        if self.num_classes is not None and self.num_classes < 1:
            raise DoeiError(f"num_classes: expected >= 1, got {self.num_classes}")
        if not self.scales or any(not (s > 0) for s in self.scales):
            raise DoeiError(f"scales: expected positive numbers, got {self.scales}")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 16 for v in self.square_sizes):
            raise DoeiError(f"square_sizes: expected square sides (ints >= 16), got {self.square_sizes}")
        if self.n_layers is not None and self.n_layers < 1:
            raise DoeiError(f"n_layers: expected >= 1, got {self.n_layers}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise DoeiError(f"batch_size/num_workers: expected >= 1 / >= 0, got {self.batch_size}/{self.num_workers}")
        if not 0.0 <= self.seed_beta <= 1.0:
            raise DoeiError(f"seed_beta: expected a background threshold in [0, 1], got {self.seed_beta}")
        if any(not (a > 0) for a in self.crf_alphas):
            raise DoeiError(f"crf_alphas: expected positive exponents, got {self.crf_alphas}")
        if self.device == "auto":
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise DoeiError(f"device {self.device!r}: expected auto, cpu, cuda or cuda:N")
        if not self.data_root:
            raise DoeiError("data_root: no dataset folder given (--data-root or data_root in the config)")
        from doei.data.build import get_dataset_spec

        accepts = get_dataset_spec(self.dataset).options
        for k in self.dataset_options:
            if k not in accepts:
                raise DoeiError(f"unknown key {k!r}: neither a doei cam setting nor an option of dataset kind "
                                f"{self.dataset!r} (it accepts: {', '.join(accepts) or 'no options'})")
        return self
