"""Studies: models × tasks × analyses in one YAML file, run by ``ivlens run STUDY.yaml``.

- :mod:`~ivlens.study.spec`: the study file, validated (:func:`load_study`);
- :mod:`~ivlens.study.plan`: its steps, one ``run_<analysis>(spec)`` each (pure);
- :mod:`~ivlens.study.runner`: run the steps not done yet into the study directory, then the report;
- :mod:`~ivlens.study.executors`: where steps run (here, one after another; side by side in worker processes:
  :mod:`~ivlens.study.process_executor`; or Ray: :mod:`~ivlens.study.ray_executor`);
- :mod:`~ivlens.study.dry_run`: every step's plan from the configs alone.

>>> from ivlens.study import load_study, run_study
>>> run_study(load_study("examples/organism.yaml")).report
PosixPath('runs/organism/report.html')
"""

from __future__ import annotations

from .plan import Step, plan_steps
from .process_executor import ProcessExecutor, local_executor
from .runner import StudyResult, run_study
from .spec import StudyError, StudySpec, load_study

__all__ = ["ProcessExecutor", "Step", "StudyError", "StudyResult", "StudySpec", "load_study", "local_executor",
           "plan_steps", "run_study"]
