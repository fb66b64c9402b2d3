"""Airflow's local-settings hook for the services of ``keep airflow up``.

Airflow imports ``airflow_local_settings`` in every process it starts; this folder is on
the services' PYTHONPATH when ``airflow.preload_modules`` is on (keep.flows.airflow_env).
In the scheduler, whose LocalExecutor forks every task process, it imports the libraries
the tasks use once (keep.flows.airflow_preload); other processes are left alone.
"""

import sys

if sys.argv[1:2] == ["scheduler"]:
    from keep.flows.airflow_preload import preload

    preload()
