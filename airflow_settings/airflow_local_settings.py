"""Airflow's local-settings hook for the Airflow processes KEEP starts.

Airflow imports ``airflow_local_settings`` in every process it starts; this folder is on
the PYTHONPATH of ``airflow dags test`` (the embedded mode) and of the services of
``keep airflow up`` when ``airflow.preload_modules`` is on (keep.flows.airflow_env).

* In the scheduler, whose LocalExecutor forks every task process, it imports the libraries
  the tasks use once (keep.flows.airflow_preload).
* In ``airflow dags test``, which runs every task of a day in one process, it freezes the
  heap at exit (``gc.freeze``): the interpreter's final garbage collections then skip the
  millions of objects of the libraries the tasks loaded (torch, Spark's client, Great
  Expectations, Feast), about 4 s of a day's command spent after its last task. Everything
  a task writes is written and closed when its task ends; what the final collections
  would have freed is freed with the process.

Other processes are left alone.
"""

import atexit
import gc
import sys

if sys.argv[1:2] == ["scheduler"]:
    from keep.flows.airflow_preload import preload

    preload()
elif sys.argv[1:3] == ["dags", "test"]:
    atexit.register(gc.freeze)
