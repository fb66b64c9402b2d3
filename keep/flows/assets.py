"""Airflow Assets shared by KEEP's DAGs (declared once; imported only by DAG files).

``KNOWLEDGE`` is updated by the daily refresh each time a validated knowledge snapshot
goes live in Feast's online store. Its event's ``extra`` names the lineage, the snapshot
day, the slot and the tables, so a consumer (the downstream training DAG, scheduled on
this Asset and therefore without a logical date of its own) knows exactly what to read.

``DOWNSTREAM_MODEL`` is updated by the downstream DAG each time a gated model version is
registered and made live; its ``extra`` names the subsystem, the version, and the knowledge
lineage and snapshot the version was trained for (what a scoring service reloads).
"""

from __future__ import annotations

from airflow.sdk import Asset

KNOWLEDGE = Asset(name="keep_knowledge", uri="keep://knowledge/online")
DOWNSTREAM_MODEL = Asset(name="keep_downstream_model", uri="keep://models/downstream")
