"""Cross-fitted linear heads: operating points judged on every labelled recording, not a few.

Why: the validation split holds one to three recordings of most call types, so no threshold
can be shown to reach precision 0.9 on new recordings, and the shipped model enables almost
no label. With a frozen backbone the head is cheap to refit, so the train and validation
recordings are pooled and split into K folds by recording; each fold's head is fitted on the
other folds and scores the held-out recordings. Those out-of-fold scores are honest held-out
evidence on about five times as many recordings: the L2 strength ``C`` is chosen on their
macro-AP, and at bundle time each recording's hops are scored by the head that never saw it
(through the edge pipeline, as the daemon runs) so the operating points rest on all of them.
The shipped head is the mean of the fold heads of that ``C`` (so the scores it publishes are
those of the heads the thresholds were set on, averaged). The test split is never part of
any of it.

The backbone was distilled on the training recordings' audio (no labels), so it has heard the
training folds; it has never been told what is in them. Its features are better on audio it
learned from than on new recordings, so the validation recordings' own out-of-fold figure is
reported next to the pooled one: that is the figure to compare backbones on.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge.config import Config
from edge.models.bundle import ModelBundle
from trainer.edge_eval import CROSS_FITTED, RecordingScores, SplitData, score_recordings
from trainer.metrics import evaluate_scores, sigmoid

log = logging.getLogger("sonotrap.trainer")

KEY = "crossfit"  # checkpoint entry: fold assignment and the out-of-fold heads
POOLED, UNHEARD = "pooled", "unheard"  # the out-of-fold figures C (and a head) can be chosen on
HOW = (CROSS_FITTED + " hop scores of every train + validation recording ({folds} folds by recording), "
       "by-recording bootstrap precision lower bound (see docs/training.md)")


def assign_folds(files: list[str], k: int, seed: int = 0) -> dict[str, int]:
    """Recording -> fold (0..k-1): a seeded shuffle dealt round-robin, so folds differ by at most one."""
    if k < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    order = sorted(set(files))
    perm = np.random.default_rng(seed).permutation(len(order))
    return {order[i]: pos % k for pos, i in enumerate(perm)}


def cross_fit(x: np.ndarray, targets: np.ndarray, known: np.ndarray, files: list[str], k: int, c_grid,
              fit, labels: list[str], seed: int = 0, unheard: np.ndarray | None = None,
              choose_on: str = POOLED) -> dict[str, Any]:
    """Out-of-fold heads for every ``C``; the ``C`` with the best out-of-fold macro-AP wins.

    ``fit(x, targets, known, c, seed, rows) -> (W, b)`` fits one head; ``rows`` are the indices of
    its rows in ``x`` (to line up data kept outside ``x``, such as a teacher's embeddings of the
    same windows). Returns ``c``, ``score`` (the figure it was chosen on), ``cv_macro_ap``
    (per C), ``assignment`` (file -> fold) and ``weights`` / ``biases`` (k, K, D) / (k, K) of the
    chosen C's fold heads.

    ``unheard`` (a row mask): the rows of recordings the backbone never trained on, not even
    their audio (the validation split). Their out-of-fold macro-AP is returned as well
    (``cv_macro_ap_unheard``), because the pooled figure flatters a distilled backbone: on
    the recordings whose audio it learned the teacher's embedding from, its features are
    better than on new recordings, and the pooled figure cannot show that (see
    docs/training.md). Compare backbones on it. ``choose_on``: the figure ``C`` is chosen on,
    ``"pooled"`` (every recording: more evidence) or ``"unheard"`` (those rows alone: the
    figure that does not flatter features of heard audio; needs ``unheard``).
    """
    if choose_on not in (POOLED, UNHEARD):
        raise ValueError(f"choose_on={choose_on!r}: use {POOLED!r} or {UNHEARD!r}")
    if choose_on == UNHEARD and (unheard is None or not unheard.any()):
        raise ValueError("choosing on the unheard recordings needs their rows (unheard=)")
    assignment = assign_folds(files, k, seed)
    fold = np.array([assignment[f] for f in files])
    cv: dict[float, float] = {}
    cv_unheard: dict[float, float] = {}
    heads: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {}
    for c in c_grid:
        oof = np.zeros(targets.shape, dtype=np.float64)
        heads[c] = []
        for j in range(k):
            out = fold == j
            w, b = fit(x[~out], targets[~out], known[~out], c, seed, np.flatnonzero(~out))
            oof[out] = sigmoid(x[out] @ w.T + b)
            heads[c].append((w, b))
        cv[c] = float(evaluate_scores(oof, targets, known, labels)["macro_ap"])
        if unheard is not None and unheard.any():
            cv_unheard[c] = float(evaluate_scores(oof[unheard], targets[unheard], known[unheard], labels)["macro_ap"])
            log.info("cross-fit C=%g: out-of-fold macro-AP %.4f (%d folds), on the unheard recordings %.4f",
                     c, cv[c], k, cv_unheard[c])
        else:
            log.info("cross-fit C=%g: out-of-fold macro-AP %.4f (%d folds)", c, cv[c], k)
    judge = cv_unheard if choose_on == UNHEARD else cv
    best = max(judge, key=lambda c: judge[c])
    return {"c": best, "chosen_on": choose_on, "score": judge[best], "cv_macro_ap": cv, "cv_macro_ap_unheard": cv_unheard or None, "folds": k, "seed": seed, "assignment": assignment,
            "weights": np.stack([w for w, _ in heads[best]]).astype(np.float32),
            "biases": np.stack([b for _, b in heads[best]]).astype(np.float32)}


def fold_scores(x: np.ndarray, weights, biases, folds: np.ndarray) -> np.ndarray:
    """Probabilities of each row by its own fold's head (row i by head ``folds[i]``), ``(N, K)``.

    One matrix product per fold: gathering a head per row would build an (N, K, D) array.
    """
    x = np.asarray(x, dtype=np.float64)
    logits = np.zeros((len(x), np.shape(weights)[1]))
    for j in np.unique(folds):
        rows = folds == j
        logits[rows] = x[rows] @ np.asarray(weights[j], np.float64).T + np.asarray(biases[j], np.float64)
    return sigmoid(logits).astype(np.float32)


class FeatureTap:
    """A model runtime that runs the bundle's frontend and gate but records its head's inputs.

    It stands in for the classifier in the edge pipeline: every hop that reaches the model is
    run through the bundle's own graph (INT8 for a quantized bundle, as on the device) up to
    the pooled features its float head reads (kept in ``features``, in order); the scores it
    returns are placeholders that :func:`out_of_fold_recordings` replaces.
    """

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self._run = feature_runner(bundle.model_path)
        self.features: list[np.ndarray] = []

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.features.append(self._run(images))
        return np.zeros((len(images), len(self.bundle.labels)), dtype=np.float32)

    def take(self) -> np.ndarray:
        out = np.concatenate(self.features) if self.features else np.zeros((0, 0), np.float32)
        self.features = []
        return out

    def self_test(self) -> np.ndarray:
        return np.zeros(len(self.bundle.labels), dtype=np.float32)

    def latency_ms(self) -> dict[str, float | None]:
        return {}


def out_of_fold_recordings(bundle: ModelBundle, crossfit: dict[str, Any], data: SplitData,
                           cfg: Config | None = None) -> list[RecordingScores]:
    """Hop scores of ``data``'s recordings through the edge pipeline, each by the head that never saw it.

    The features come from the bundle's own graph (every fold shares the backbone), so the
    evidence is what the device computes. Gated hops keep score 0, as on the device.
    """
    cfg = cfg or Config()
    tap = FeatureTap(bundle)
    out = []
    for file in data.files:
        fold = crossfit["assignment"].get(file)
        if fold is None:
            raise ValueError(f"{file} is not in the cross-fit folds")
        [rec] = score_recordings(bundle, SplitData(data.root, [file], [], data.durations), cfg, runtime=tap)
        feats = tap.take()
        scores = np.zeros_like(rec.scores)
        active = ~rec.gated
        if feats.shape[0] != int(active.sum()):
            raise RuntimeError(f"{file}: {feats.shape[0]} feature rows for {int(active.sum())} model hops")
        scores[active] = fold_scores(feats, crossfit["weights"], crossfit["biases"], np.full(len(feats), fold))
        out.append(RecordingScores(rec.file, rec.duration_s, rec.hops, rec.t_start, rec.t_end, scores, rec.gated))
    return out


def feature_runner(model_path, batch: int = 16):
    """``run(images) -> (N, D)``: the pooled features an ONNX model (FP32 or INT8) feeds its final Gemm.

    The head stays in float in the INT8 graph, so its input is a float tensor; exposing it as an
    extra output gives what the device's backbone computed, for held-out fold heads.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if not gemms:
        raise ValueError(f"{model_path} has no Gemm head")
    name = gemms[-1].input[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        outs = [sess.run([name], {inp: np.ascontiguousarray(images[i: i + batch])})[0]
                for i in range(0, len(images), batch)]
        return np.concatenate(outs).reshape(len(images), -1)

    return run


def held_out_predict(crossfit: dict[str, Any], files: list[str]):
    """``predict(model_path, images)`` for the INT8 check: each window scored by its recording's fold head.

    The shipped head was fitted on the validation windows, so its own scores there say nothing
    about an INT8 drop (AP ~1 either way); the fold heads never saw those recordings.
    """
    folds = np.array([crossfit["assignment"][f] for f in files])

    def predict(model_path, images: np.ndarray) -> np.ndarray:
        return fold_scores(feature_runner(model_path)(images), crossfit["weights"], crossfit["biases"], folds)

    return predict
