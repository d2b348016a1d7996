"""The WSSS pipeline as a library: ``run_pipeline(cfg)`` runs the stages of a
:class:`doei.pipeline_config.PipelineConfig` in order, resumable stage by stage and image by image.
``doei run`` (:mod:`doei.commands.run_cmd`) only parses arguments and prints the table."""
from doei.pipeline.evaluation import eval_rows, format_table, stage_eval
from doei.pipeline.fingerprints import STAGE_CODE, describe_change, fingerprint_of, stage_inputs
from doei.pipeline.markers import MARKER, RUN_LOG, fingerprint, marker_path, read_marker, stage_settings
from doei.pipeline.runner import STAGE_FUNCS, check_finished, inputs_change, preflight, run_pipeline, stage_outputs
from doei.pipeline.stages import Resolved, cam_config, classifier_config, resolve

__all__ = ["run_pipeline", "STAGE_FUNCS", "preflight", "eval_rows", "format_table", "stage_eval", "MARKER", "RUN_LOG",
           "fingerprint", "fingerprint_of", "stage_inputs", "STAGE_CODE", "describe_change",
           "check_finished", "inputs_change", "stage_outputs", "marker_path", "read_marker", "stage_settings", "cam_config", "classifier_config",
           "Resolved", "resolve"]
