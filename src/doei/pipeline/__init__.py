"""The WSSS pipeline as a library: ``run_pipeline(cfg)`` runs the stages of a
:class:`doei.pipeline_config.PipelineConfig` in order, resumable stage by stage and image by image.
``doei run`` (:mod:`doei.commands.run_cmd`) only parses arguments and prints the table."""
from doei.pipeline.evaluation import eval_rows, format_table, stage_eval
from doei.pipeline.markers import MARKER, RUN_LOG, fingerprint, marker_path, read_marker, stage_settings
from doei.pipeline.runner import STAGE_FUNCS, preflight, run_pipeline
from doei.pipeline.stages import Resolved, cam_config, classifier_config, resolve

__all__ = ["run_pipeline", "STAGE_FUNCS", "preflight", "eval_rows", "format_table", "stage_eval", "MARKER", "RUN_LOG",
           "fingerprint", "marker_path", "read_marker", "stage_settings", "cam_config", "classifier_config",
           "Resolved", "resolve"]
