"""The studies: the demo, the reproduction of the paper's comparison and the real-model run.

Modules: engine (cached, resumable stages: stamps, completion markers, result files), report
(summaries, mean ± std, correction-rate start / end, markdown and plots), measure (accuracy and
draft statistics), and one recipe module per study: demo, reproduce (+ reproduce_report),
real_model (+ real_model_report). Nothing is imported here: `skd --help` stays instant.
"""
