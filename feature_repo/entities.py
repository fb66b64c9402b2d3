"""Entities of the KEEP feature store: who or what a feature describes.

Knowledge and counters are keyed by the lake's int64 ids. The paper's user-item
knowledge is cached per user x category, which Feast expresses as a view over the two
entities ``user`` and ``category`` (a composite join key).
"""

from feast import Entity, ValueType

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
