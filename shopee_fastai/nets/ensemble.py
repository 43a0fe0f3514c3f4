"""An ensemble of models that share a frozen lower body: the body runs once, each member's top stages and head
run on its output, and the members' outputs are averaged.

Classifiers: the output is the log of the mean probability, so softmax of it gives that mean: fastai's loss,
`get_preds`, TTA and the exported ONNX graph treat it as any classifier's logits. Embeddings: the mean of
the members' unit-length embeddings, which matching normalises again, so a cosine similarity of the ensemble
is that of the members' averaged directions.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .body import Split, is_embedding_head, split_model


class Ensemble(nn.Module):
    def __init__(self, frozen: nn.Module, members: Sequence[nn.Module]):
        super().__init__()
        self.frozen = frozen
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.frozen(x)
        if self.embedding:
            return torch.stack([F.normalize(m(shared).float(), dim=1) for m in self.members]).mean(0)
        probs = torch.stack([m(shared).float().softmax(1) for m in self.members]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    @property
    def embedding(self) -> bool:
        """Whether the members end in an embedding head (nets.body.embedding_head)."""
        return is_embedding_head(self.members[0][-1])

    def member(self, k: int) -> Ensemble:
        """Member `k` alone (sharing its weights), to score it by itself."""
        return Ensemble(self.frozen, [self.members[k]])


def ensemble_of(model: nn.Module, top_stages: int, n: int) -> Ensemble:
    """`n` copies of `model`'s top part (last `top_stages` body stages and head) over its lower body, shared."""
    split = split_model(model, top_stages)
    return Ensemble(split.frozen, [split.trained] + [copy.deepcopy(split.trained) for _ in range(n - 1)])


def member_split(model: Ensemble, k: int):
    """Member `k` as the features recipe trains it: the shared frozen part, its own top stages and head."""
    trained = model.members[k]
    return Split(model.frozen, trained, trained[0])
