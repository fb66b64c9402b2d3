"""The multi-task pre-training model of KEEP's knowledge extraction (docs/pretrain.md).

Small typed modules composed into :class:`MultiTaskModel`::

    hashed ids ──► FeatureEmbeddings (user, item, category, brand, scenario, behaviour type,
                   gender, age, purchase power, position; hashed buckets, row 0 = padding)
    behaviour sequence [B,L] ──► BehaviorEncoder ──► keys [N,3D] (item|cat|brand),
                                                     values [N,4D] (+ scenario+type),
                                 packed: the N present behaviours only, never the padding
    UserTower      (mean-pooled behaviours, user id, profile, u_* counters)   ──► user K
    ItemTower      (item|cat|brand, log price, i_* counters)                  ──► item K
    UserCategoryTower (attention over the sequence, query = candidate category, share of
                       behaviours in that category, uc_* counters)                                        ──► user×cat K
    TargetAttention (DIN: candidate item over the sequence)                   ──► [B,4D]
    SharedTower(user K, item K, user×cat K, user K ⊙ item K, DIN, item/brand repeats,
                scenario, position)
        ──► three logits: click, cart | click, purchase | click   (see models/pretrain/losses.py)

The three knowledge outputs do not look at the candidate item (the user×category one only
at its category), so they are cacheable per key and exported by the knowledge job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from keep.core.config import PretrainSettings
from models.pretrain.features import (
    ORDINAL_SLOTS,
    POSITION_SLOTS,
    BehaviorSeq,
    ItemBatch,
    SampleBatch,
    UserBatch,
    UserCategoryBatch,
)

# Bump when the architecture changes in a way that changes the meaning of the knowledge:
# it is part of the lineage hash.
ARCHITECTURE_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the model's parameter shapes (and so the knowledge's meaning)."""

    user_buckets: int
    item_buckets: int
    category_buckets: int
    brand_buckets: int
    scenario_buckets: int
    embedding_dim: int
    knowledge_dim: int
    hidden_dims: tuple[int, ...]
    user_counters: int
    item_counters: int
    user_category_counters: int
    max_seq_len: int = 50
    architecture: int = ARCHITECTURE_VERSION
    counter_names: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_settings(
        cls, pretrain: PretrainSettings, windows: list[int], max_seq_len: int = 50
    ) -> ModelConfig:
        from models.pretrain.features import (
            ITEM_PREFIX,
            USER_CATEGORY_PREFIX,
            USER_PREFIX,
            counter_columns,
        )

        names = {
            "user": counter_columns(USER_PREFIX, windows),
            "item": counter_columns(ITEM_PREFIX, windows),
            "user_category": counter_columns(USER_CATEGORY_PREFIX, windows),
        }
        return cls(
            user_buckets=pretrain.user_buckets,
            item_buckets=pretrain.item_buckets,
            category_buckets=pretrain.category_buckets,
            brand_buckets=pretrain.brand_buckets,
            scenario_buckets=pretrain.scenario_buckets,
            embedding_dim=pretrain.embedding_dim,
            knowledge_dim=pretrain.knowledge_dim,
            hidden_dims=tuple(pretrain.hidden_dims),
            user_counters=len(names["user"]),
            item_counters=len(names["item"]),
            user_category_counters=len(names["user_category"]),
            max_seq_len=max_seq_len,
            counter_names=names,
        )

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["hidden_dims"] = list(self.hidden_dims)
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ModelConfig:
        values = dict(data)
        values["hidden_dims"] = tuple(values["hidden_dims"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """Hash of the shape-defining fields (counter names included): part of the lineage."""
        blob = json.dumps(
            {**self.to_json(), "counter_names": self.counter_names}, sort_keys=True
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def mlp(sizes: list[int], *, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class HashedEmbedding(nn.Module):
    """Embedding of 63-bit id hashes into ``buckets`` rows; hash 0 (missing) -> zero row 0."""

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        if buckets < 2:
            raise ValueError("an embedding needs at least 2 buckets (row 0 is padding)")
        self.buckets = buckets
        # Sparse gradients: a step touches only the rows of the batch's ids, so the optimizer
        # (SparseAdam, see models/pretrain/optim.py) does not sweep the whole hashed table every step.
        self.table = nn.Embedding(buckets, dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.table.weight, std=0.05)
        with torch.no_grad():
            self.table.weight[0].zero_()

    def forward(self, hashed: Tensor) -> Tensor:
        """``hashed``: int64 ``[*]`` (>= 0) -> ``[*, D]``."""
        rows = torch.where(hashed > 0, hashed % (self.buckets - 1) + 1, torch.zeros_like(hashed))
        return self.table(rows)


class EmbeddingShapes(Protocol):
    """What :class:`FeatureEmbeddings` reads from a config (the downstream model's has it too)."""

    @property
    def user_buckets(self) -> int: ...
    @property
    def item_buckets(self) -> int: ...
    @property
    def category_buckets(self) -> int: ...
    @property
    def brand_buckets(self) -> int: ...
    @property
    def scenario_buckets(self) -> int: ...
    @property
    def embedding_dim(self) -> int: ...


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The hashed embedding tables of ``module`` (sparse gradients, SparseAdam)."""
    return [m.table.weight for m in module.modules() if isinstance(m, HashedEmbedding)]  # type: ignore[misc]


def dense_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every other parameter of ``module`` (dense Adam)."""
    sparse = {id(p) for p in sparse_parameters(module)}
    return [p for p in module.parameters() if id(p) not in sparse]


class FeatureEmbeddings(nn.Module):
    """Every sparse feature's table; item/category/brand are shared by sequence and candidate."""

    def __init__(self, cfg: EmbeddingShapes) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.user = HashedEmbedding(cfg.user_buckets, d)
        self.item = HashedEmbedding(cfg.item_buckets, d)
        self.category = HashedEmbedding(cfg.category_buckets, d)
        self.brand = HashedEmbedding(cfg.brand_buckets, d)
        self.scenario = HashedEmbedding(cfg.scenario_buckets, d)
        self.behavior = nn.Embedding(4, d, padding_idx=0)  # click / cart / purchase
        self.gender = nn.Embedding(4, d, padding_idx=0)
        self.age = nn.Embedding(ORDINAL_SLOTS, d, padding_idx=0)
        self.power = nn.Embedding(ORDINAL_SLOTS, d, padding_idx=0)
        self.position = nn.Embedding(POSITION_SLOTS, d, padding_idx=0)
        for emb in (self.behavior, self.gender, self.age, self.power, self.position):
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()

    def item_repr(self, item: Tensor, category: Tensor, brand: Tensor) -> Tensor:
        """Hashed ``[*]`` ids -> ``[*, 3D]`` (item | category | brand)."""
        return torch.cat([self.item(item), self.category(category), self.brand(brand)], dim=-1)


@dataclass(frozen=True)
class EncodedSeq:
    """The present behaviours of a padded ``[B, L]`` sequence, packed: element ``n`` is slot
    ``index[1][n]`` of batch row ``row[n]`` (``row = index[0]``). Padding is never computed
    on: a batch's width is its longest sequence, while most sequences are far shorter."""

    index: tuple[Tensor, Tensor]
    rows: int
    keys: Tensor  # [N, 3D] item | category | brand
    values: Tensor  # [N, 4D] keys | scenario + behaviour type

    @property
    def row(self) -> Tensor:
        return self.index[0]

    def gather(self, padded: Tensor) -> Tensor:
        """A ``[B, L, *]`` tensor's entries at the present behaviours -> ``[N, *]``."""
        return padded[self.index]

    def mean_values(self) -> Tensor:
        """Mean of each row's values ``[B, 4D]`` (zeros for an empty sequence)."""
        total = self.values.new_zeros(self.rows, self.values.shape[-1])
        total = total.index_add(0, self.row, self.values)
        count = torch.bincount(self.row, minlength=self.rows).clamp_min(1)
        return total / count.unsqueeze(-1).to(total.dtype)


class BehaviorEncoder(nn.Module):
    """Behaviour sequence -> packed attention keys ``[N, 3D]`` and values ``[N, 4D]``."""

    def __init__(self, emb: FeatureEmbeddings) -> None:
        super().__init__()
        self.emb = emb

    def forward(self, seq: BehaviorSeq) -> EncodedSeq:
        rows, slots = torch.nonzero(seq.mask, as_tuple=True)
        index = (rows, slots)
        keys = self.emb.item_repr(seq.item[index], seq.category[index], seq.brand[index])
        context = self.emb.scenario(seq.scenario[index]) + self.emb.behavior(seq.behavior[index])
        values = torch.cat([keys, context], dim=-1)
        return EncodedSeq(index=index, rows=seq.mask.shape[0], keys=keys, values=values)


class TargetAttention(nn.Module):
    """DIN-style attention unit: score(q, k) = MLP([q, k, q - k, q * k]), softmax over each
    row's behaviours.

    Used twice: with the candidate item as query (prediction path) and with the candidate's
    category as query (cacheable user x category knowledge). Empty sequences give zeros.
    Keys and values come packed (:class:`EncodedSeq`): ``row`` names each one's batch row.
    """

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.dim = dim
        self.score = mlp([4 * dim, hidden, 1], last_activation=False)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, row: Tensor) -> Tensor:
        """``query`` ``[B, Q]``, ``keys`` ``[N, Q]``, ``values`` ``[N, V]``, ``row`` ``[N]``
        (each key's row of ``query``) -> ``[B, V]``."""
        rows = query.shape[0]
        logits = self.score[2](torch.relu(self.hidden(query, keys, row))).squeeze(-1)  # [N]
        # Softmax within each row; the shift by the row's max is a constant for the gradient.
        top = logits.new_full((rows,), -torch.inf)
        top = top.scatter_reduce(0, row, logits.detach(), reduce="amax", include_self=True)
        e = torch.exp(logits - top[row])
        total = e.new_zeros(rows).index_add(0, row, e)
        weights = e / total[row]
        out = values.new_zeros(rows, values.shape[-1])
        return out.index_add(0, row, weights.unsqueeze(-1) * values)

    def hidden(self, query: Tensor, keys: Tensor, row: Tensor) -> Tensor:
        """The score MLP's first layer on ``[q, k, q - k, q * k]`` without building that
        ``[N, 4Q]`` input: with its weight split ``[Wq | Wk | Wd | Wp]`` it equals
        ``(Wq + Wd) q + b`` (once per row) ``+ (Wk - Wd) k + Wp (q * k)``."""
        first: nn.Linear = self.score[0]  # type: ignore[assignment]
        wq, wk, wd, wp = first.weight.split(self.dim, dim=1)  # each [H, Q]
        per_row = nn.functional.linear(query, wq + wd, first.bias)  # [B, H]
        q = query[row]
        return (
            per_row[row] + nn.functional.linear(keys, wk - wd) + nn.functional.linear(q * keys, wp)
        )


def match_features(query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
    """How much of the sequence matches the query id: ``[B]`` vs ``[B, L]`` hashes -> ``[B, 2]``
    (share of behaviours with the same id, log1p of their count). Hashes are compared, so
    this is exact for ids and never depends on embedding buckets."""
    hits = ((keys == query.unsqueeze(-1)) & mask & (query.unsqueeze(-1) > 0)).float().sum(-1)
    length = mask.float().sum(-1).clamp_min(1.0)
    return torch.stack([hits / length, torch.log1p(hits)], dim=-1)


class UserTower(nn.Module):
    """Candidate-independent user knowledge from pooled behaviours, id, profile and counters."""

    def __init__(self, cfg: ModelConfig, emb: FeatureEmbeddings) -> None:
        super().__init__()
        d, k = cfg.embedding_dim, cfg.knowledge_dim
        self.emb = emb
        self.counters = nn.Linear(cfg.user_counters, d) if cfg.user_counters else None
        width = 4 * d + 4 * d + (d if self.counters is not None else 0)
        self.net = mlp([width, 2 * k, k], last_activation=False)

    def forward(self, user: UserBatch, encoded: EncodedSeq) -> Tensor:
        """``encoded``: ``user``'s sequence, encoded -> ``[B, K]``."""
        parts = [
            encoded.mean_values(),
            self.emb.user(user.user),
            self.emb.gender(user.gender),
            self.emb.age(user.age),
            self.emb.power(user.power),
        ]
        if self.counters is not None:
            parts.append(torch.relu(self.counters(user.counters)))
        return self.net(torch.cat(parts, dim=-1))


class ItemTower(nn.Module):
    """Item knowledge from item / category / brand embeddings, log price and counters."""

    def __init__(self, cfg: ModelConfig, emb: FeatureEmbeddings) -> None:
        super().__init__()
        d, k = cfg.embedding_dim, cfg.knowledge_dim
        self.emb = emb
        self.counters = nn.Linear(cfg.item_counters, d) if cfg.item_counters else None
        width = 3 * d + 1 + (d if self.counters is not None else 0)
        self.net = mlp([width, 2 * k, k], last_activation=False)

    def forward(self, item: ItemBatch) -> Tensor:
        """-> ``[B, K]``."""
        parts = [
            self.emb.item_repr(item.item, item.category, item.brand),
            item.price.unsqueeze(-1),
        ]
        if self.counters is not None:
            parts.append(torch.relu(self.counters(item.counters)))
        return self.net(torch.cat(parts, dim=-1))


class UserCategoryTower(nn.Module):
    """User x category knowledge: attention over behaviours with the category as the query."""

    def __init__(self, cfg: ModelConfig, emb: FeatureEmbeddings) -> None:
        super().__init__()
        d, k = cfg.embedding_dim, cfg.knowledge_dim
        self.emb = emb
        # Keys are the behaviours' category embeddings, so the query can be a category alone.
        self.attention = TargetAttention(d)
        self.counters = (
            nn.Linear(cfg.user_category_counters, d) if cfg.user_category_counters else None
        )
        width = 4 * d + d + 2 + (d if self.counters is not None else 0)
        self.net = mlp([width, 2 * k, k], last_activation=False)

    def forward(self, uc: UserCategoryBatch, encoded: EncodedSeq) -> Tensor:
        """``encoded``: ``uc``'s sequence, encoded -> ``[B, K]``."""
        query = self.emb.category(uc.category)
        keys = self.emb.category(encoded.gather(uc.seq.category))
        parts = [
            self.attention(query, keys, encoded.values, encoded.row),
            query,
            match_features(uc.category, uc.seq.category, uc.seq.mask),
        ]
        if self.counters is not None:
            parts.append(torch.relu(self.counters(uc.counters)))
        return self.net(torch.cat(parts, dim=-1))


class SharedTower(nn.Module):
    """Shared hidden layers and the three funnel heads."""

    def __init__(self, width: int, hidden_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.body = mlp([width, *hidden_dims], last_activation=True)
        last = hidden_dims[-1] if hidden_dims else width
        self.click = nn.Linear(last, 1)
        self.cart = nn.Linear(last, 1)
        self.purchase = nn.Linear(last, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, W]`` -> logits ``[B, 3]``: click, cart | click, purchase | click."""
        h = self.body(x)
        return torch.cat([self.click(h), self.cart(h), self.purchase(h)], dim=-1)


class MultiTaskModel(nn.Module):
    """KEEP's pre-training model; knowledge accessors are candidate-independent."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        d, k = cfg.embedding_dim, cfg.knowledge_dim
        self.emb = FeatureEmbeddings(cfg)
        self.encoder = BehaviorEncoder(self.emb)
        self.user_tower = UserTower(cfg, self.emb)
        self.item_tower = ItemTower(cfg, self.emb)
        self.user_category_tower = UserCategoryTower(cfg, self.emb)
        self.din = TargetAttention(3 * d)
        self.shared = SharedTower(4 * k + 4 * d + 2 * d + 4, cfg.hidden_dims)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The hashed embedding tables (sparse gradients)."""
        return sparse_parameters(self)

    def dense_parameters(self) -> list[nn.Parameter]:
        return dense_parameters(self)

    def _check(self, names: tuple[str, ...], expected: int, side: str) -> None:
        if len(names) != expected:
            wanted = self.config.counter_names.get(side, [])
            raise ValueError(
                f"{side} batch has {len(names)} counter columns, the model was trained with "
                f"{expected} ({wanted[:3]}...): build the table with the same windows."
            )

    def user_knowledge(self, user: UserBatch) -> Tensor:
        """User knowledge ``[B, K]`` (never looks at a candidate)."""
        self._check(user.counter_names, self.config.user_counters, "user")
        return self.user_tower(user, self.encoder(user.seq))

    def item_knowledge(self, item: ItemBatch) -> Tensor:
        """Item knowledge ``[B, K]``."""
        self._check(item.counter_names, self.config.item_counters, "item")
        return self.item_tower(item)

    def user_category_knowledge(self, uc: UserCategoryBatch) -> Tensor:
        """User x category knowledge ``[B, K]`` (query: ``uc.category``)."""
        self._check(uc.counter_names, self.config.user_category_counters, "user_category")
        return self.user_category_tower(uc, self.encoder(uc.seq))

    def forward(self, batch: SampleBatch) -> Tensor:
        """Logits ``[B, 3]`` of click, cart | click, purchase | click (see models/pretrain/losses.py)."""
        self._check(batch.user.counter_names, self.config.user_counters, "user")
        self._check(batch.item.counter_names, self.config.item_counters, "item")
        self._check(
            batch.user_category.counter_names,
            self.config.user_category_counters,
            "user_category",
        )
        encoded = self.encoder(batch.user.seq)  # sequence encoded once, used 3 times
        user_k = self.user_tower(batch.user, encoded)
        item_k = self.item_tower(batch.item)
        uc_k = self.user_category_tower(batch.user_category, encoded)
        candidate = self.emb.item_repr(batch.item.item, batch.item.category, batch.item.brand)
        seq = batch.user.seq
        din = self.din(candidate, encoded.keys, encoded.values, encoded.row)
        # Exact item / brand repeats of the candidate in the sequence (re-purchase, loyalty).
        repeats = torch.cat(
            [
                match_features(batch.item.item, seq.item, seq.mask),
                match_features(batch.item.brand, seq.brand, seq.mask),
            ],
            dim=-1,
        )
        x = torch.cat(
            [
                user_k,
                item_k,
                uc_k,
                user_k * item_k,
                din,
                repeats,
                self.emb.scenario(batch.scenario),
                self.emb.position(batch.position),
            ],
            dim=-1,
        )
        return self.shared(x)
