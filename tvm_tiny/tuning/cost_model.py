"""XGBoost cost model over knob and workload features, trained to RANK configs.

AutoTVM's ``XGBoostCostModel(loss_type="rank")`` in miniature: the objective is
``rank:pairwise`` over one query group holding every measured config of the task, with
relevance ``best cost / cost`` (1 for the best config so far, towards 0 for slow ones, 0 for
configs that failed). Only the order of the predictions matters, so the instruction counts
need no normalisation across workloads. The tuner retrains it from scratch every round on all
measurements so far (:meth:`XGBCostModel.fit`); training is single-threaded and seeded, so the
same measurements give the same model.
"""

from __future__ import annotations

import math

import numpy as np
import xgboost as xgb

from tvm_tiny.tuning.space import ConfigSpace

#: Boosting rounds and tree settings for spaces of a few hundred to a few thousand configs
#: trained on at most a few hundred measurements.
XGB_PARAMS = {
    "objective": "rank:pairwise",
    "eta": 0.3,
    "max_depth": 6,
    "min_child_weight": 0,
    "gamma": 1e-4,
    "subsample": 1.0,
    "lambda": 1.0,
    "nthread": 1,
    "verbosity": 0,
}
NUM_BOOST_ROUNDS = 60


class XGBCostModel:
    """Predicts a score per config of ``space``: higher means fewer instructions."""

    def __init__(self, space: ConfigSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        self._booster = None
        self._features: dict[int, np.ndarray] = {}

    def _matrix(self, indices: list[int]) -> np.ndarray:
        rows = []
        for index in indices:
            if index not in self._features:
                self._features[index] = self.space.features(self.space.get(index))
            rows.append(self._features[index])
        return np.stack(rows)

    @staticmethod
    def relevance(costs: list[float]) -> np.ndarray:
        """``best / cost`` per measurement (0 for a failure, inf cost)."""
        finite = [c for c in costs if math.isfinite(c)]
        if not finite:
            return np.zeros(len(costs))
        best = min(finite)
        return np.array([best / c if math.isfinite(c) and c > 0 else 0.0 for c in costs])

    def fit(self, indices: list[int], costs: list[float]) -> None:
        """Train from scratch on measured configs (``costs``: instructions, inf = failed)."""
        labels = self.relevance(costs)
        if len(indices) < 2 or float(labels.max() - labels.min()) == 0.0:
            self._booster = None  # nothing to rank yet
            return
        dtrain = xgb.DMatrix(self._matrix(indices), label=labels, nthread=1)
        dtrain.set_group([len(indices)])
        self._booster = xgb.train({**XGB_PARAMS, "seed": self.seed}, dtrain,
                                  num_boost_round=NUM_BOOST_ROUNDS)

    @property
    def trained(self) -> bool:
        return self._booster is not None

    def predict(self, indices: list[int]) -> np.ndarray:
        """Scores of ``indices`` (zeros before the first successful fit)."""
        if not indices:
            return np.zeros(0)
        if self._booster is None:
            return np.zeros(len(indices))
        return self._booster.predict(xgb.DMatrix(self._matrix(indices), nthread=1))
