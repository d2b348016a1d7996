"""The DOEI study: Table-4 component ablation and one-parameter sweeps, on the synthetic benchmark or, given
a pipeline config, as resumable ``doei run``s on any dataset (``pipeline_study``: Table 4 / Fig. 4 on VOC).

``grid`` defines the runs, ``runner`` trains/evaluates one run (resumable), ``table`` aggregates seeds
(mean ± std, paired differences, wins) and ``plot`` draws the sweep figures. The CLI commands are
``doei ablate`` and ``doei sweep``; docs/results.md reports what they measured.
"""
