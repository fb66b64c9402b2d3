"""Data sources: the Delta tables of the lake, read in place (no copies).

Knowledge tables (``knowledge.<entity>``) hold every lineage and daily snapshot; counter
tables (``silver.<entity>_stats``) one full snapshot per day. Both carry
``event_timestamp`` = end of the day they describe, so a point-in-time join gives a
sample of day d+1 the state of the end of day d. Columns are renamed with the gold
samples' prefixes (``u_`` / ``i_`` / ``uc_``) so that one feature service can hold the
user, item and user x category features without name clashes.

Paths come from the project settings through ``KEEP_FEAST_*`` variables
(keep.store.feast_repo.feast_env); nothing here is hard-coded.
"""

from feast import FileSource
from feast.data_format import DeltaFormat

from keep.core.feast_names import (
    knowledge_columns,
    repo_params,
    serving_feature,
    source_table_path,
    stats_columns,
)
from keep.core.tables import knowledge_spec, serving_features_spec, stats_spec

_params = repo_params()

user_knowledge_source = FileSource(
    name="user_knowledge_source",
    path=source_table_path(_params, knowledge_spec("user")),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping=knowledge_columns("user"),
    description="knowledge.user: one vector per user, lineage and daily snapshot.",
    owner="knowledge-platform@keep",
    tags={"layer": "knowledge"},
)

item_knowledge_source = FileSource(
    name="item_knowledge_source",
    path=source_table_path(_params, knowledge_spec("item")),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping=knowledge_columns("item"),
    description="knowledge.item: one vector per item, lineage and daily snapshot.",
    owner="knowledge-platform@keep",
    tags={"layer": "knowledge"},
)

user_category_knowledge_source = FileSource(
    name="user_category_knowledge_source",
    path=source_table_path(_params, knowledge_spec("user_category")),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping=knowledge_columns("user_category"),
    description="knowledge.user_category: one vector per (user, category), lineage, snapshot.",
    owner="knowledge-platform@keep",
    tags={"layer": "knowledge"},
)

user_stats_source = FileSource(
    name="user_stats_source",
    path=source_table_path(_params, stats_spec("user", _params.windows)),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping=stats_columns("user", _params.windows),
    description="silver.user_stats: multi-window counters per user as of the end of ds.",
    owner="knowledge-platform@keep",
    tags={"layer": "silver"},
)

item_stats_source = FileSource(
    name="item_stats_source",
    path=source_table_path(_params, stats_spec("item", _params.windows)),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping=stats_columns("item", _params.windows),
    description="silver.item_stats: multi-window counters per item as of the end of ds.",
    owner="knowledge-platform@keep",
    tags={"layer": "silver"},
)

user_category_stats_source = FileSource(
    name="user_category_stats_source",
    path=source_table_path(_params, stats_spec("user_category", _params.windows)),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping=stats_columns("user_category", _params.windows),
    description="silver.user_category_stats: counters per (user, category) as of the end of ds.",
    owner="knowledge-platform@keep",
    tags={"layer": "silver"},
)

user_serving_source = FileSource(
    name="downstream_user_serving_source",
    path=source_table_path(_params, serving_features_spec("user")),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping={"features": serving_feature("user")},
    description="gold.downstream_user_serving: the downstream model's own user features.",
    owner="knowledge-platform@keep",
    tags={"layer": "gold"},
)

item_serving_source = FileSource(
    name="downstream_item_serving_source",
    path=source_table_path(_params, serving_features_spec("item")),
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    field_mapping={"features": serving_feature("item")},
    description="gold.downstream_item_serving: the downstream model's own item features.",
    owner="knowledge-platform@keep",
    tags={"layer": "gold"},
)
