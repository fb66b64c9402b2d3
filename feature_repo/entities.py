"""Entities of the KEEP feature store: who or what a feature describes.

Knowledge and counters are keyed by the lake's int64 ids. The paper's user-item
knowledge is cached per user x category, which Feast expresses as a view over the two
entities ``user`` and ``category`` (a composite join key).

``lineage`` (join key ``knowledge_lineage``, a string) is the second key of the OFFLINE
knowledge views: several knowledge lineages coexist in the knowledge tables (a new one is
published beside the old one), and a training set names the lineage in its entity rows so
that the point-in-time join returns exactly that lineage's vectors. The online slot views
are keyed by user / item / (user, category) only: a slot holds one snapshot of one
lineage, which the publication pointer names (docs/feast.md).
"""

from feast import Entity, ValueType

from keep.core.feast_names import LINEAGE_ENTITY, LINEAGE_JOIN_KEY

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A shopper, by the platform-wide user id (the same id in every subsystem).",
    owner="knowledge-platform@keep",
    tags={"team": "keep"},
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="An item (product or ad creative), by the platform-wide item id.",
    owner="knowledge-platform@keep",
    tags={"team": "keep"},
)

category = Entity(
    name="category",
    join_keys=["category_id"],
    value_type=ValueType.INT64,
    description="An item category; with `user` it keys the user x category knowledge.",
    owner="knowledge-platform@keep",
    tags={"team": "keep"},
)

lineage = Entity(
    name=LINEAGE_ENTITY,
    join_keys=[LINEAGE_JOIN_KEY],
    value_type=ValueType.STRING,
    description="A knowledge lineage (changes only when the vectors' meaning changes); with "
    "user / item / (user, category) it keys the offline knowledge views.",
    owner="knowledge-platform@keep",
    tags={"team": "keep"},
)
