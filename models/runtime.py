"""Running an exported model with onnxruntime: what the aggregator scores with (no torch).

A model directory holds gnn.onnx, gbt.onnx, lr.onnx and meta.json (feature names, scaler,
classes each member saw, ensemble weights, calibration, k, window).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import ensemble, graph

FILES = ("gnn.onnx", "gbt.onnx", "lr.onnx", "meta.json")


def digest(model_dir: str | Path) -> str:
    h = hashlib.sha256()
    for name in FILES:
        h.update((Path(model_dir) / name).read_bytes())
    return h.hexdigest()


class Model:
    def __init__(self, model_dir: str | Path) -> None:
        self.dir = Path(model_dir)
        self.meta: dict[str, Any] = json.loads((self.dir / "meta.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sessions = {
            m: ort.InferenceSession(
                str(self.dir / f"{m}.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            for m in ensemble.MEMBERS
        }
        self.scaler = graph.Scaler(
            np.asarray(self.meta["scaler_mean"]), np.asarray(self.meta["scaler_std"])
        )
        self.k = self.meta["k"]
        self.classes = len(self.meta["classes"])

    def members(
        self,
        x: np.ndarray,
        nx: np.ndarray,
        ny: np.ndarray,
        s: np.ndarray,
        m: np.ndarray,
        gfeat: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Each member's class probabilities; X raw features, NX standardized neighbour rows."""
        z = self.scaler.transform(x)
        f32 = np.float32
        out = {
            "gnn": self.sessions["gnn"].run(
                None,
                {
                    "x": z.astype(f32),
                    "nx": nx.astype(f32),
                    "ny": ny.astype(f32),
                    "s": s.astype(f32),
                    "m": m.astype(f32),
                },
            )[0]
        }
        gbt = self.sessions["gbt"].run(None, {"x": np.hstack([x, gfeat]).astype(f32)})[1]
        lr = self.sessions["lr"].run(None, {"x": z.astype(f32)})[1]
        out["gbt"] = ensemble.expand(gbt, np.asarray(self.meta["gbt_classes"]))
        out["lr"] = ensemble.expand(lr, np.asarray(self.meta["lr_classes"]))
        return {k: v.astype(np.float64) for k, v in out.items()}

    def score(
        self,
        x: np.ndarray,
        idx_rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        gfeat: np.ndarray,
    ) -> dict[str, np.ndarray]:
        nx, ny, s, m = idx_rows[:4]
        return ensemble.combine(self.members(x, nx, ny, s, m, gfeat), self.meta)
