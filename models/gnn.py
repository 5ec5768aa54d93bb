"""The GNN over the job-similarity network, in plain torch (training only).

One round of message passing: each neighbour j of a starting job i sends
m_ij = MLP([z_j, onehot(outcome_j), sim_ij]); the job combines the masked mean of its messages
with its own encoding and predicts the outcome class.  A neighbour's outcome is known (it ended
before i started); i's own outcome never enters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class JobGNN(nn.Module):
    def __init__(self, dim: int, classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.message = nn.Sequential(
            nn.Linear(dim + classes + 1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x, nx, ny, s, m):  # (B,d) (B,k,d) (B,k,C) (B,k) (B,k)
        msg = self.message(torch.cat([nx, ny, s.unsqueeze(-1)], dim=-1)) * m.unsqueeze(-1)
        agg = msg.sum(dim=1) / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        logits = self.head(torch.cat([self.encode(x), agg], dim=-1))
        return torch.softmax(logits, dim=-1)


def fit(
    arrays: tuple[np.ndarray, ...],
    y: np.ndarray,
    classes: int,
    epochs: int = 25,
    seed: int = 0,
    batch: int = 256,
    progress=None,
) -> JobGNN:
    torch.manual_seed(seed)
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in arrays]
    target = torch.as_tensor(y, dtype=torch.long)
    model = JobGNN(tensors[0].shape[1], classes)
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weight = torch.as_tensor(
        np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** 0.5, 0.0),
        dtype=torch.float32,
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.NLLLoss(weight=weight)
    n = len(target)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(batch):
            probs = model(*(t[idx] for t in tensors))
            loss = loss_fn(torch.log(probs.clamp(min=1e-7)), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if progress:
            progress(epoch + 1, epochs)
    model.eval()
    return model


def predict(model: JobGNN, arrays: tuple[np.ndarray, ...], batch: int = 4096) -> np.ndarray:
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in arrays]
    out = []
    with torch.no_grad():
        for i in range(0, len(tensors[0]), batch):
            out.append(model(*(t[i : i + batch] for t in tensors)).numpy())
    return np.vstack(out) if out else np.zeros((0, model.head[-1].out_features))


def export(model: JobGNN, dim: int, classes: int, k: int, path: str) -> None:
    sample = (
        torch.zeros(2, dim),
        torch.zeros(2, k, dim),
        torch.zeros(2, k, classes),
        torch.zeros(2, k),
        torch.ones(2, k),
    )
    names = ["x", "nx", "ny", "s", "m"]
    torch.onnx.export(
        model,
        sample,
        path,
        input_names=names,
        output_names=["probs"],
        dynamo=False,
        dynamic_axes={name: {0: "batch"} for name in [*names, "probs"]},
        opset_version=17,
    )
