"""The cross-check cases every backend must pass (`lstmbench check` and tests/), as data: sizes, optimiser, clip and
generation settings covering docs/SPEC.md §9 (embedding and one-hot, 1 to 3 layers, zero and
non-zero initial state, T up to 100, every optimiser and clip kind, greedy and sampled)."""
from __future__ import annotations

from dataclasses import dataclass

from impls.config import (CaseSpec, ClipConfig, GenerateConfig, ModelConfig, OptimizerConfig,
                          TrainConfig)


@dataclass(frozen=True)
class CrossCase:
    id: str  # pytest id
    spec: CaseSpec  # model, optimiser, clip, steps, generation
    batch: int  # B
    seq_len: int  # T
    zero_state: bool = False  # start from zeros instead of a random state
    seed: int = 0  # case seed


def _c(id: str, model: ModelConfig, opt: OptimizerConfig, clip: ClipConfig, gen: GenerateConfig,
       B: int, T: int, steps: int = 3, **kw: object) -> CrossCase:
    return CrossCase(id, CaseSpec(model, TrainConfig(opt, clip), steps, gen), B, T, **kw)  # type: ignore[arg-type]


CROSS_CASES: list[CrossCase] = [
    _c("onehot1-sgd-greedy", ModelConfig(11, 5), OptimizerConfig("sgd", lr=0.5), ClipConfig(),
       GenerateConfig(12, 0.0), B=3, T=8, seed=1),
    _c("embed2-adam-norm-topk", ModelConfig(13, 7, 2, "embedding", 6),
       OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 0.05), GenerateConfig(15, 0.8, 4),
       B=2, T=20, seed=2),
    _c("onehot3-rmsprop-value", ModelConfig(10, 8, 3), OptimizerConfig("rmsprop", lr=0.005, alpha=0.95),
       ClipConfig("value", 0.002), GenerateConfig(15, 1.0), B=4, T=30, seed=3),
    _c("embed1-adagrad-T100", ModelConfig(17, 9, 1, "embedding", 5), OptimizerConfig("adagrad", lr=0.1),
       ClipConfig(), GenerateConfig(20, 1.3), B=2, T=100, seed=4),
    _c("onehot2-sgd-norm-zero-state", ModelConfig(65, 32, 2), OptimizerConfig("sgd", lr=1.0),
       ClipConfig("norm", 0.5), GenerateConfig(25, 0.7, 10), B=5, T=50, zero_state=True, seed=5),
]
