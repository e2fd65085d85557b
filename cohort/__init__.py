"""Cohorts: the application run on every study under a folder, on Ray, with a cohort table.

``python -m cohort run --input ROOT --output OUT`` finds every study under ROOT by StudyInstanceUID
(:mod:`cohort.discovery`), runs the app on each in Ray workers that keep the models loaded
(:mod:`cohort.worker`, :mod:`cohort.runner`), writes one output folder per study with the app's
outputs, a cohort table (:mod:`cohort.table`) and, with labels, the paper's statistics
(:mod:`cohort.statistics`). ``--resume`` checks which outputs are complete (:mod:`cohort.validation`).
"""
