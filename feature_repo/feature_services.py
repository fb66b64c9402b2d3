"""Feature services: the versioned feature sets models are trained and served with.

``downstream_ctr_v1`` is what the downstream CTR model (with the KEEP plug-in) reads for
its training sets: user, item and user x category knowledge plus the three entities'
counters. Online, knowledge is read from the live slot (serving.retrieval); see
docs/feast.md.
"""

from feast import FeatureService
from features import (
    item_knowledge_fv,
    item_stats_fv,
    user_category_knowledge_fv,
    user_category_stats_fv,
    user_knowledge_fv,
    user_stats_fv,
)

downstream_ctr_v1 = FeatureService(
    name="downstream_ctr_v1",
    features=[
        user_knowledge_fv,
        item_knowledge_fv,
        user_category_knowledge_fv,
        user_stats_fv,
        item_stats_fv,
        user_category_stats_fv,
    ],
    description="Downstream CTR model v1: knowledge (user, item, user x category) + counters.",
    owner="knowledge-platform@keep",
    tags={"use_case": "downstream_ctr", "version": "1"},
)
