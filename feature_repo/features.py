"""Feature views: knowledge (offline + blue/green online slots) and counters.

Three kinds of views, per entity (user, item, user x category):

* ``<entity>_knowledge_fv`` -- the knowledge of every lineage and snapshot, for training
  sets (``get_historical_features``), keyed by the entity AND the ``lineage`` entity (join
  key ``knowledge_lineage``): entity rows name the lineage, so a point-in-time join gives
  exactly that lineage's vectors even while another lineage has a snapshot of the same day.
  Offline only (``online=False``): knowledge reaches the online store through the
  validated, atomic publication (keep.store.publication.publish_knowledge), never through
  ``feast materialize``.
* ``<entity>_knowledge_blue_fv`` / ``<entity>_knowledge_green_fv`` -- the two online slots.
  One holds the live snapshot, the other the previous one (or the one being published);
  a pointer in the online store says which is live and which lineage and snapshot it
  holds (docs/feast.md), so the slots are keyed by the entity only (serving reads them by
  user / item keys, one lineage at a time). They are declared ``online=False`` so that
  ``feast materialize[-incremental]`` skips them and refuses them by name ("... is not
  configured to be served online"): a plain materialization would write the latest rows
  of every lineage and snapshot, ungated, into a live slot behind the pointer's back.
  Feast still serves them online (``get_online_features`` and ``feast serve`` read any
  enabled view); publication creates their online tables.
* ``<entity>_stats_fv`` -- the multi-window counters, materialized the plain Feast way
  (one full snapshot per day, so the latest row per key is the state of the last day).
* ``downstream_user_fv`` / ``downstream_item_fv`` -- what the live downstream model reads
  online besides knowledge (profile, in-scenario behaviours and du_* counters per user;
  category, brand, price and di_* counters per item), one packed bytes value per key so
  that a scoring request reads one value per key (docs/serving.md). Written online by
  the downstream DAG's register task with the version it registers.

TTLs (how far back a point-in-time join may reach from a sample's time):

* knowledge: 3 days. A snapshot covers every key every day, so a join never needs more
  than one day; 3 tolerates two missed daily refreshes (vectors of one lineage drift
  slowly) and returns nulls -- a visible failure -- past that.
* counters: 1 day. Counters are full daily snapshots whose windows are day-exact; a sample
  of day d must see exactly the end of d-1, and a missing day must show as nulls rather
  than as counters silently shifted by a day.
"""

from data_sources import (
    item_knowledge_source,
    item_serving_source,
    item_stats_source,
    user_category_knowledge_source,
    user_category_stats_source,
    user_knowledge_source,
    user_serving_source,
    user_stats_source,
)
from entities import category, item, lineage, user
from feast import FeatureView, Field
from feast.types import Array, Bool, Bytes, Float32, Float64, Int64, String

from keep.core.feast_names import (
    KNOWLEDGE_TTL,
    LINEAGE_JOIN_KEY,
    SLOTS,
    STATS_TTL,
    knowledge_columns,
    knowledge_view_name,
    repo_params,
    serving_feature,
    serving_view_name,
    slot_view_name,
    stats_columns,
    stats_view_name,
)

_params = repo_params()
OWNER = "knowledge-platform@keep"

_ENTITY_WORDS = {"user": "user", "item": "item", "user_category": "(user, category)"}
_ENTITY_TITLES = {"user": "User", "item": "Item", "user_category": "User x category"}
_STATS_DESCRIPTIONS = {
    "user": "Multi-window impression/click/cart/purchase counters and CTR per user.",
    "item": "Multi-window impression/click/cart/purchase counters and CTR per item.",
    "user_category": "Multi-window counters and CTR per (user, category).",
}


_KEY_FIELDS = {
    "user_id": Field(name="user_id", dtype=Int64, description="Join key of the user entity."),
    "item_id": Field(name="item_id", dtype=Int64, description="Join key of the item entity."),
    "category_id": Field(
        name="category_id", dtype=Int64, description="Join key of the category entity."
    ),
}
_KEYS = {"user": ["user_id"], "item": ["item_id"], "user_category": ["user_id", "category_id"]}


def _key_fields(entity: str) -> list[Field]:
    """The entity columns, declared so that they too carry a dtype and a description."""
    return [_KEY_FIELDS[k] for k in _KEYS[entity]]


def _knowledge_fields(entity: str) -> list[Field]:
    names = knowledge_columns(entity)
    who = _ENTITY_WORDS[entity]
    return _key_fields(entity) + [
        Field(
            name=LINEAGE_JOIN_KEY,
            dtype=String,
            description="Join key of the lineage entity: lineage of the vector (changes "
            "when the vectors' meaning changes).",
        ),
        Field(
            name=names["vector"],
            dtype=Array(Float32),
            description=f"Knowledge vector of the {who} ({_params.knowledge_dim} floats).",
        ),
        Field(
            name=names["recomputed"],
            dtype=Bool,
            description="True if recomputed from this day's state, False if carried forward.",
        ),
        Field(
            name=names["snapshot_ds"],
            dtype=String,
            description="Day of the checkpoint that produced the vector (YYYY-MM-DD).",
        ),
    ]


def _slot_fields(entity: str) -> list[Field]:
    # Online slots carry the vector only: lineage and snapshot are per slot, in the pointer.
    vector = knowledge_columns(entity)["vector"]
    return _key_fields(entity) + [f for f in _knowledge_fields(entity) if f.name == vector]


def _stats_fields(entity: str) -> list[Field]:
    who = _ENTITY_WORDS[entity]
    fields = _key_fields(entity)
    for column, name in stats_columns(entity, _params.windows).items():
        counter, window = column.rsplit("_", 1)
        if counter == "ctr":
            fields.append(
                Field(
                    name=name,
                    dtype=Float64,
                    description=f"Smoothed click rate of the {who} over the last {window}.",
                )
            )
        else:
            fields.append(
                Field(
                    name=name,
                    dtype=Int64,
                    description=f"Number of {counter} of the {who} over the last {window}.",
                )
            )
    return fields


# --------------------------------------------------------------------------- knowledge

_SOURCES = {
    "user": (user_knowledge_source, user_stats_source, [user]),
    "item": (item_knowledge_source, item_stats_source, [item]),
    "user_category": (
        user_category_knowledge_source,
        user_category_stats_source,
        [user, category],
    ),
}


def _knowledge_view(entity: str) -> FeatureView:
    source, _, entities = _SOURCES[entity]
    return FeatureView(
        name=knowledge_view_name(entity),
        # Keyed by lineage too: a training set gets exactly the lineage it names.
        entities=[*entities, lineage],
        ttl=KNOWLEDGE_TTL,
        schema=_knowledge_fields(entity),
        source=source,
        online=False,
        description=f"{_ENTITY_TITLES[entity]} knowledge of every lineage and snapshot "
        "(training sets).",
        owner=OWNER,
        tags={"layer": "knowledge", "entity": entity, "publication": "offline"},
    )


user_knowledge_fv = _knowledge_view("user")
item_knowledge_fv = _knowledge_view("item")
user_category_knowledge_fv = _knowledge_view("user_category")

# --------------------------------------------------------------------------- online slots


def _slot_view(entity: str, slot: str) -> FeatureView:
    source, _, entities = _SOURCES[entity]
    return FeatureView(
        name=slot_view_name(entity, slot),
        entities=entities,
        ttl=KNOWLEDGE_TTL,
        schema=_slot_fields(entity),
        source=source,
        # online=False keeps `feast materialize[-incremental]` away from the slots: it skips
        # them, and refuses them by name ("not configured to be served online"). They are
        # still read online (get_online_features / feast serve read any enabled view); only
        # keep.store.publication.publish_knowledge writes them.
        online=False,
        description=(
            f"Online slot '{slot}' of the {_ENTITY_WORDS[entity]} knowledge; live when the "
            "publication pointer names it. Written only by keep.store.publication.publish_knowledge."
        ),
        owner=OWNER,
        tags={"layer": "knowledge", "entity": entity, "slot": slot, "publication": "slot"},
    )


user_knowledge_blue_fv = _slot_view("user", SLOTS[0])
user_knowledge_green_fv = _slot_view("user", SLOTS[1])
item_knowledge_blue_fv = _slot_view("item", SLOTS[0])
item_knowledge_green_fv = _slot_view("item", SLOTS[1])
user_category_knowledge_blue_fv = _slot_view("user_category", SLOTS[0])
user_category_knowledge_green_fv = _slot_view("user_category", SLOTS[1])

# --------------------------------------------------------------------------- counters


def _stats_view(entity: str) -> FeatureView:
    _, source, entities = _SOURCES[entity]
    return FeatureView(
        name=stats_view_name(entity),
        entities=entities,
        ttl=STATS_TTL,
        schema=_stats_fields(entity),
        source=source,
        online=True,
        description=_STATS_DESCRIPTIONS[entity],
        owner=OWNER,
        tags={"layer": "silver", "entity": entity, "publication": "materialize"},
    )


user_stats_fv = _stats_view("user")
item_stats_fv = _stats_view("item")
user_category_stats_fv = _stats_view("user_category")

# --------------------------------------------------------------------------- serving features


def _serving_view(entity: str, source: object, entities: list) -> FeatureView:
    return FeatureView(
        name=serving_view_name(entity),
        entities=entities,
        ttl=KNOWLEDGE_TTL,
        schema=[
            _KEY_FIELDS[f"{entity}_id"],
            Field(
                name=serving_feature(entity),
                dtype=Bytes,
                description=(
                    "The downstream model's own features, packed "
                    "(models/downstream/serving_features.py)."
                ),
            ),
        ],
        source=source,
        online=True,
        description=f"The live downstream model's own {entity} features, as of the end of a day.",
        owner=OWNER,
        tags={"layer": "gold", "entity": entity, "publication": "downstream_register"},
    )


downstream_user_fv = _serving_view("user", user_serving_source, [user])
downstream_item_fv = _serving_view("item", item_serving_source, [item])
