"""The downstream subsystem's own CTR model, KEEP's plug-in network and the comparison arms.

Small typed modules composed into :class:`DownstreamModel` (docs/downstream.md)::

    hashed ids ──► FeatureEmbeddings (the downstream model's own tables; models/pretrain)
    in-scenario behaviour sequence [B,L] ──► BehaviorEncoder ──► keys [N,3D], values [N,4D] (packed)
    TargetAttention (DIN: candidate item over the in-scenario sequence)        ──► [B,4D]
    BaseInputs: candidate item|cat|brand, user id, profile, position, log price, DIN,
                du_*/di_* counters                                             ──► x [B,W]
    PluggableTower: hidden layers h_i = relu(W_i h_{i-1} + b_i [+ plug-in offset_i]) ──► click logit

Arms (same base, same optimiser; DESIGN.md "Honest comparison"):

* ``base``                 — the subsystem trained on its own feedback only;
* ``keep``                 — base + :class:`PlugIn`: knowledge → one offset per hidden layer,
                             each projection's last layer zero-initialised, so a ``keep``
                             model built from a ``base`` model (:func:`plug_into`) computes
                             exactly the base output until the plug-in is trained;
* ``concat``               — base with the knowledge vectors and flags concatenated to x;
* ``superdomain_features`` — base + the raw super-domain sequence through a second DIN and
                             the super-domain ``u_*``/``i_*``/``uc_*`` counters in x (no
                             pre-training);
* ``finetune``             — the pre-trained model itself (models/downstream/finetune.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import torch
from torch import Tensor, nn

from keep.core.config import Settings
from keep.core.tables import COUNTERS, STAT_PREFIX
from models.downstream.counters import downstream_counter_columns
from models.downstream.features import DownstreamBatch, Knowledge, downstream_batch
from models.pretrain.multitask import (
    BehaviorEncoder,
    FeatureEmbeddings,
    TargetAttention,
    dense_parameters,
    mlp,
    sparse_parameters,
)

ARMS: tuple[str, ...] = ("base", "keep", "concat", "superdomain_features")
KNOWLEDGE_ARMS: frozenset[str] = frozenset({"keep", "concat"})
N_KNOWLEDGE = 3  # user, item, user x category


@dataclass(frozen=True)
class DownstreamConfig:
    """Everything that fixes a downstream model's parameter shapes and its inputs."""

    scenario: str
    user_buckets: int
    item_buckets: int
    category_buckets: int
    brand_buckets: int
    embedding_dim: int
    hidden_dims: tuple[int, ...]
    plugin_hidden: int
    knowledge_dim: int
    counter_windows: tuple[int, ...]
    superdomain_windows: tuple[int, ...]
    max_seq_len: int = 50
    scenario_buckets: int = 17
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> DownstreamConfig:
        ds = settings.downstream
        return cls(
            scenario=ds.scenario,
            user_buckets=ds.user_buckets,
            item_buckets=ds.item_buckets,
            category_buckets=ds.category_buckets,
            brand_buckets=ds.brand_buckets,
            embedding_dim=ds.embedding_dim,
            hidden_dims=tuple(ds.hidden_dims),
            plugin_hidden=ds.plugin_hidden,
            knowledge_dim=settings.pretrain.knowledge_dim,
            counter_windows=tuple(ds.counter_windows),
            superdomain_windows=tuple(settings.aggregate.windows),
            max_seq_len=ds.max_seq_len,
        )

    @property
    def counters(self) -> int:
        return len(downstream_counter_columns(self.counter_windows))

    @property
    def superdomain_counters(self) -> int:
        return len(STAT_PREFIX) * len(self.superdomain_windows) * (len(COUNTERS) + 1)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        for name in ("hidden_dims", "counter_windows", "superdomain_windows"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> DownstreamConfig:
        values = dict(data)
        for name in ("hidden_dims", "counter_windows", "superdomain_windows"):
            values[name] = tuple(values[name])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


class PlugIn(nn.Module):
    """KEEP's plug-in network: knowledge → one additive offset per hidden layer.

    Input: user, item and user x category knowledge ``[B, K]`` each and their missing flags
    ``[B, 3]``. One small MLP per hidden layer of the downstream tower; the last linear layer
    of each is zero-initialised (weight and bias), so at initialisation every offset is
    exactly 0 and the plugged model equals the unplugged one.
    """

    def __init__(self, knowledge_dim: int, hidden: int, layer_dims: tuple[int, ...]) -> None:
        super().__init__()
        width = N_KNOWLEDGE * knowledge_dim + N_KNOWLEDGE
        self.projections = nn.ModuleList(
            mlp([width, hidden, h], last_activation=False) for h in layer_dims
        )
        for proj in self.projections:
            assert isinstance(proj, nn.Sequential)
            last = proj[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, knowledge: Knowledge) -> list[Tensor]:
        """-> one offset ``[B, H_i]`` per hidden layer ``i`` of the tower."""
        x = torch.cat(
            [knowledge.user, knowledge.item, knowledge.user_category, knowledge.missing], dim=-1
        )
        return [proj(x) for proj in self.projections]


class PluggableTower(nn.Module):
    """The downstream MLP: hidden layers whose pre-activations accept additive offsets, and
    the click head."""

    def __init__(self, width: int, hidden_dims: tuple[int, ...]) -> None:
        super().__init__()
        sizes = [width, *hidden_dims]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(sizes[-1], 1)

    def forward(self, x: Tensor, offsets: list[Tensor] | None = None) -> Tensor:
        """``x`` ``[B, W]``, ``offsets`` one ``[B, H_i]`` per layer (or None) -> logits ``[B]``."""
        h = x
        for i, layer in enumerate(self.layers):
            pre = layer(h)
            if offsets is not None:
                pre = pre + offsets[i]
            h = torch.relu(pre)
        return self.head(h).squeeze(-1)


class BaseInputs(nn.Module):
    """The subsystem's own features → the tower's input ``x`` ``[B, 13D + 1]``."""

    def __init__(self, cfg: DownstreamConfig) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.emb = FeatureEmbeddings(cfg)
        self.encoder = BehaviorEncoder(self.emb)
        self.din = TargetAttention(3 * d)
        self.counters = nn.Linear(cfg.counters, d)
        self.width = 3 * d + d + 3 * d + d + 1 + 4 * d + d

    def candidate(self, batch: DownstreamBatch) -> Tensor:
        """Candidate item | category | brand ``[B, 3D]``."""
        return self.emb.item_repr(batch.item, batch.category, batch.brand)

    def forward(self, batch: DownstreamBatch) -> Tensor:
        """-> ``[B, W]`` with ``W = self.width``."""
        candidate = self.candidate(batch)
        encoded = self.encoder(batch.seq)
        return torch.cat(
            [
                candidate,
                self.emb.user(batch.user),
                self.emb.gender(batch.gender),
                self.emb.age(batch.age),
                self.emb.power(batch.power),
                self.emb.position(batch.position),
                batch.price.unsqueeze(-1),
                self.din(candidate, encoded.keys, encoded.values, encoded.row),
                torch.relu(self.counters(batch.counters)),
            ],
            dim=-1,
        )


class SuperDomainInputs(nn.Module):
    """The ``superdomain_features`` arm's extras: a second DIN over the raw super-domain
    sequence (the base's embeddings) and the super-domain counters -> ``[B, 5D]``."""

    def __init__(self, cfg: DownstreamConfig, base: BaseInputs) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.encoder = base.encoder
        self.din = TargetAttention(3 * d)
        self.counters = nn.Linear(cfg.superdomain_counters, d)
        self.width = 4 * d + d

    def forward(self, batch: DownstreamBatch, candidate: Tensor) -> Tensor:
        """``candidate`` ``[B, 3D]`` -> ``[B, 5D]``."""
        extras = batch.superdomain
        if extras is None:
            raise ValueError("the superdomain_features arm needs batch.superdomain")
        encoded = self.encoder(extras.seq)
        return torch.cat(
            [
                self.din(candidate, encoded.keys, encoded.values, encoded.row),
                torch.relu(self.counters(extras.counters)),
            ],
            dim=-1,
        )


class DownstreamModel(nn.Module):
    """The downstream CTR model of one arm (see the module docstring): click logits ``[B]``."""

    def __init__(self, cfg: DownstreamConfig, arm: str = "base") -> None:
        super().__init__()
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}: use one of {', '.join(ARMS)}")
        self.config = cfg
        self.arm = arm
        self.inputs = BaseInputs(cfg)
        width = self.inputs.width
        self.superdomain: SuperDomainInputs | None = None
        if arm == "superdomain_features":
            self.superdomain = SuperDomainInputs(cfg, self.inputs)
            width += self.superdomain.width
        if arm == "concat":
            width += N_KNOWLEDGE * cfg.knowledge_dim + N_KNOWLEDGE
        self.tower = PluggableTower(width, cfg.hidden_dims)
        self.plugin: PlugIn | None = None
        if arm == "keep":
            self.plugin = PlugIn(cfg.knowledge_dim, cfg.plugin_hidden, cfg.hidden_dims)

    @property
    def uses_knowledge(self) -> bool:
        return self.arm in KNOWLEDGE_ARMS

    def batch(self, table: pa.Table) -> DownstreamBatch:
        """The inputs this arm reads from training-set rows (and nothing more)."""
        cfg = self.config
        return downstream_batch(
            table,
            scenario=cfg.scenario,
            counter_windows=cfg.counter_windows,
            max_len=cfg.max_seq_len,
            knowledge_dim=cfg.knowledge_dim if self.uses_knowledge else None,
            superdomain_windows=(
                cfg.superdomain_windows if self.arm == "superdomain_features" else None
            ),
        )

    def sparse_parameters(self) -> list[nn.Parameter]:
        return sparse_parameters(self)

    def dense_parameters(self) -> list[nn.Parameter]:
        return dense_parameters(self)

    def _knowledge(self, batch: DownstreamBatch) -> Knowledge:
        if batch.knowledge is None:
            raise ValueError(f"the {self.arm} arm needs batch.knowledge (build it with .batch)")
        return batch.knowledge

    def forward(self, batch: DownstreamBatch) -> Tensor:
        """Click logits ``[B]``."""
        if batch.counters.shape[1] != self.config.counters:
            raise ValueError(
                f"batch has {batch.counters.shape[1]} downstream counters, the model "
                f"{self.config.counters} (windows {list(self.config.counter_windows)})"
            )
        x = self.inputs(batch)
        parts = [x]
        if self.superdomain is not None:
            parts.append(self.superdomain(batch, self.inputs.candidate(batch)))
        if self.arm == "concat":
            k = self._knowledge(batch)
            parts += [k.user, k.item, k.user_category, k.missing]
        if len(parts) > 1:
            x = torch.cat(parts, dim=-1)
        offsets = self.plugin(self._knowledge(batch)) if self.plugin is not None else None
        return self.tower(x, offsets)


def build_model(cfg: DownstreamConfig, arm: str, *, seed: int) -> DownstreamModel:
    """A freshly initialised model of ``arm``; the same seed gives the same weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return DownstreamModel(cfg, arm)
    finally:
        torch.random.set_rng_state(generator_state)


def plug_into(base: DownstreamModel, *, seed: int = 0) -> DownstreamModel:
    """A ``keep`` model with ``base``'s parameters (copied) and a fresh, zero-output plug-in.

    At this point its logits equal ``base``'s exactly on any batch; training then moves the
    plug-in (and, with the daily warm start, the base parameters too).
    """
    if base.arm != "base":
        raise ValueError(f"plug_into expects a base model, got arm {base.arm!r}")
    keep = build_model(base.config, "keep", seed=seed)
    missing, unexpected = keep.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not name.startswith("plugin.") for name in missing):
        raise ValueError(f"base and keep differ beyond the plug-in: {missing} {unexpected}")
    return keep
