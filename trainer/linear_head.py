"""``sonotrap linear-head``: the distilled backbone, frozen, with a logistic regression per label as its fc.

The checkpoint is finalised like ``best.pt`` at the end of training (validation thresholds,
val and test metrics), so evaluation, quantization and the bundle treat it the same.

Why: on nips4bplus, a linear head fitted on the stage-1 (distilled) ResNet50's 2048-d
features scores better on validation than fine-tuning the whole network on the few
labelled recordings (macro-AP 0.563 vs 0.509): fine-tuning forgets what the teacher taught.
The result is the ordinary architecture (torchvision ResNet50, ``fc`` 2048 -> labels), so
export, INT8 and the edge are unchanged, and compute per audio-second is identical.

The logistic regressions (balanced class weights, L2 strength ``C`` chosen on the validation
split's macro-AP; test is never looked at) run on standardised features; the standardisation
is folded into ``fc``: ``w' = w / sigma``, ``b' = b - sum(w * mu / sigma)``.

With ``unlabeled`` recordings the head may also self-train (:func:`self_training`): a head
fitted on the labelled windows pseudo-labels the unlabeled windows it is sure about and is
fitted again with them. It competes with the plain head on the same held-out figure, so it is
used only when it scores better there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import SonotrapError
from trainer.checkpoint import BEST, load_checkpoint, save_checkpoint, update_checkpoint, without_resume_state
from trainer.crossfit import KEY as CROSSFIT
from trainer.crossfit import POOLED, cross_fit
from trainer.evaluate import finalize
from trainer.head_copies import copy_image_chunks, stack_copies, with_copies
from trainer.metrics import evaluate_scores, sigmoid
from trainer.model import build_model
from trainer.pseudo import check_bounds, pseudo_label
from trainer.rundata import RunData, image_chunks, load_run_data, load_split_arrays

log = logging.getLogger("sonotrap.trainer")

C_GRID = (0.003, 0.01, 0.03, 0.1)
SELF_TRAINED, TEACHER_LABELLED = "self-training", "teacher-labelled"  # the pseudo-labelled heads' names
OUT = "linear_head.pt"
# a backbone's record (its summary.json) names the split whose labels it has learned, if any
LABELS_LEARNED = "labels_learned"
ABSENT_BIAS = -12.0  # a label without positives (or negatives) in train: never fires


def fold_standardisation(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Weights on raw features equal to ``coef`` applied to ``(x - mean) / scale``."""
    w = coef / scale[None, :]
    return w, intercept - w @ mean


def fit_head(x: np.ndarray, targets: np.ndarray, known: np.ndarray, c: float, seed: int = 0,
             rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) weights and (K,) biases on raw features: one balanced logistic regression per label.

    ``rows`` (the indices of ``x``'s rows among all labelled windows, which every ``fit`` is
    given) is not needed here; a teacher-labelled fit uses it to line up the teacher's data.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    coef = np.zeros((targets.shape[1], x.shape[1]))
    bias = np.full(targets.shape[1], ABSENT_BIAS)
    for k in range(targets.shape[1]):
        m = known[:, k]
        y = targets[m, k] > 0.5
        if y.all() or not y.any():
            continue
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed).fit(z[m], y)
        coef[k], bias[k] = clf.coef_[0], clf.intercept_[0]
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    w, b = fold_standardisation(coef, np.zeros_like(bias), np.asarray(scaler.mean_), scale)
    return w, b + bias


@torch.no_grad()
def features(backbone: torch.nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Pooled 2048-d ResNet50 features (float32 inference, as export and the edge run it)."""
    backbone.eval()
    out = [backbone(torch.from_numpy(images[i: i + batch]).contiguous(memory_format=torch.channels_last)).numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float64)


class TeacherProbe:
    """Pseudo labels from a stronger model: a probe on the teacher's embeddings of the same windows.

    ``labelled`` holds the teacher's embeddings of the labelled windows, in the order of the
    rows the head is fitted on (train, then validation); ``unlabeled`` those of the unlabeled
    windows. For a given set of labelled rows, one balanced logistic regression per label
    (:func:`fit_head`, strength ``c``) is fitted on their embeddings and scores the unlabeled
    windows. The probe does not depend on the head's ``C``, so it is fitted once per row set.
    Why: BirdNET's embedding separates these calls better than the student's features, so its
    probe labels the unlabeled windows more reliably than the head labels them itself; the
    head learns from those labels and the teacher is not needed on the device.
    """

    def __init__(self, labelled: np.ndarray, unlabeled: np.ndarray, c: float = 1.0) -> None:
        self.labelled, self.unlabeled, self.c = np.asarray(labelled, np.float64), np.asarray(unlabeled, np.float64), c
        self._memo: dict[bytes, np.ndarray] = {}

    def scores(self, rows: np.ndarray, targets: np.ndarray, known: np.ndarray, seed: int = 0) -> np.ndarray:
        key = np.asarray(rows, np.int64).tobytes()
        if key not in self._memo:
            w, b = fit_head(self.labelled[rows], targets, known, self.c, seed)
            self._memo[key] = sigmoid(self.unlabeled @ w.T + b)
        return self._memo[key]


def self_training(x_unlabeled: np.ndarray, high: float = 0.9, low: float = 0.1, fit=fit_head,
                  teacher: TeacherProbe | None = None, copies: list[np.ndarray] | None = None):
    """A ``fit`` that also learns from the unlabeled windows its first head is sure about.

    ``fit(x, targets, known, c, seed)`` fits a head on the labelled windows; it scores the
    unlabeled windows, and per label a score ``>= high`` makes a positive, ``<= low`` a
    negative, anything between stays unknown (:func:`trainer.pseudo.pseudo_label`); the head
    is then fitted on both. Why: 7-16 labelled recordings per call type leave each regression
    few examples of what else the region sounds like; the unlabeled recordings of the same
    region add them. Used inside cross-fitting, each fold's pseudo labels come from a head that
    never saw that fold, so its out-of-fold score stays held out.

    With a ``teacher`` the scores come from :class:`TeacherProbe` fitted on the same labelled
    rows (so, cross-fitted, it never saw the held-out fold's labels either) instead of the
    head's own first fit; it uses the rows' indices (``rows``) that
    :func:`trainer.crossfit.cross_fit` and :func:`linear_head` give every ``fit``. ``copies``:
    features of speed-changed copies of all labelled rows (:mod:`trainer.head_copies`), fitted
    on with the rows; the teacher's probe still learns from the rows' own embeddings.
    """
    check_bounds(high, low)

    def fit_pseudo_labelled(x, targets, known, c, seed=0, rows=None):
        xa, ta, ka = stack_copies(x, targets, known, rows, copies or [])
        if teacher is None:
            w, b = fit(xa, ta, ka, c, seed)
            probs = sigmoid(x_unlabeled @ w.T + b)
        else:
            if rows is None:
                raise ValueError("a teacher's pseudo labels need the labelled rows' indices (rows=)")
            probs = teacher.scores(rows, targets, known, seed)
        none = np.zeros(probs.shape, dtype=bool)
        pl = pseudo_label(probs, none.astype(np.float32), none, high, low)
        return fit(np.concatenate([xa, x_unlabeled]), np.concatenate([ta, pl.targets]),
                   np.concatenate([ka, pl.known]), c, seed)

    return fit_pseudo_labelled


def unlabeled_features(backbone: torch.nn.Module, folder: Path, windows, cfg, chunk: int = 512) -> np.ndarray:
    """Pooled features of ``windows`` (:func:`trainer.teacher_cache.unlabeled_windows` of ``folder``).

    Float32 images, as the labelled windows' features are computed (``distill.window_images``
    stores float16 for training), in chunks so a large folder does not hold every image at once.
    """
    return np.concatenate([features(backbone, images) for images in image_chunks(folder, windows, cfg, chunk)])


def linear_head(run_dir: str | Path, backbone_path: str | Path | None = None, c_grid=C_GRID,
                out_name: str = OUT, seed: int = 0, folds: int = 0, unlabeled: str | Path | None = None,
                pseudo: tuple[float, float] = (0.9, 0.1), pseudo_teacher: str | None = None,
                teacher_threads: int = 1, teacher_model=None, speed_copies: int = 0,
                choose_on: str = POOLED) -> tuple[Path, dict[str, Any]]:
    """Write ``RUN_DIR/linear_head.pt`` (a sonotrap checkpoint); returns it and the choice of C.

    ``folds`` >= 2: cross-fit instead (:mod:`trainer.crossfit`): C is chosen on out-of-fold
    macro-AP over the pooled train + validation recordings, the head is the mean of the fold
    heads, and the fold heads are kept in the checkpoint so the bundle's operating points can
    be set on every one of those recordings.

    ``unlabeled``: a folder of recordings (``files.csv``) for :func:`self_training` with
    ``pseudo`` = (high, low); the self-trained head is chosen only if it scores better on the
    same held-out figure as the plain one. ``pseudo_teacher="birdnet"``: the pseudo labels come
    from a :class:`TeacherProbe` on BirdNET's embeddings (cached in the run directory, as for
    ``train --teacher``; ``teacher_model`` replaces BirdNET, for tests) instead of the head.

    ``speed_copies``: each head also learns from that many speed-changed copies of every
    labelled window (:mod:`trainer.head_copies`); its figures are still scored on the windows.

    ``choose_on="unheard"`` (cross-fitting only): C and the head are chosen on the validation
    recordings' out-of-fold macro-AP instead of the pooled one. Why: the pooled figure is
    mostly recordings whose audio a distilled backbone learnt from, and there it rewards a head
    that leans on features the field never gives it (docs/training.md).
    """
    run_dir = Path(run_dir)
    if choose_on != POOLED and folds < 2:
        raise SonotrapError("--choose-on val-recordings picks among out-of-fold figures; add --folds K (K >= 2)")
    if not c_grid or min(c_grid) <= 0:
        raise SonotrapError(f"--c {' '.join(map(str, c_grid))}: give one or more L2 strengths above 0, e.g. 0.01")
    template = run_dir / BEST
    backbone_path = Path(backbone_path or run_dir / "distill" / "backbone.pt")
    for p, hint in ((template, "train the run first"), (backbone_path, "train with --teacher, or pass --backbone")):
        if not p.exists():
            raise SonotrapError(f"{p} does not exist; {hint}")
    ckpt = load_checkpoint(template)
    if pseudo_teacher is not None and unlabeled is None:
        raise SonotrapError("--pseudo-teacher labels unlabeled recordings; give them with --unlabeled DIR")
    if pseudo_teacher not in (None, "birdnet"):
        raise SonotrapError(f"--pseudo-teacher {pseudo_teacher}: the only teacher is birdnet")
    if unlabeled is not None:  # bad arguments fail before the feature passes, not after
        from trainer.teacher_cache import unlabeled_windows

        check_bounds(*pseudo)
        u_windows = unlabeled_windows(unlabeled, ckpt.frontend.window_s)
        if not u_windows:
            raise SonotrapError(f"{Path(unlabeled) / 'files.csv'} lists no recordings; add the unlabeled "
                                "recordings to it (file,duration_s,sample_rate) or drop --unlabeled")
    net, stage1 = load_backbone(backbone_path)
    net = net.to(memory_format=torch.channels_last)
    learned = (stage1 or {}).get(LABELS_LEARNED)
    if folds >= 2 and learned:
        log.warning("linear head: %s learned the %s windows' labels (tune-top), so out-of-fold figures over "
                    "train + validation, and operating points set on them, are optimistic", backbone_path, learned)
    data = {s: load_split_arrays(run_dir, s) for s in ("train", "val")}
    feats = {s: features(net, a.images) for s, a in data.items()}
    run = load_run_data(run_dir)
    copies = [np.concatenate([features(net, images) for images in chunks])
              for chunks in copy_image_chunks(run, speed_copies, seed)]
    fits = {"labelled": with_copies(fit_head, copies)}
    st_info: dict[str, Any] = {}
    if unlabeled is not None:
        teacher = None
        if pseudo_teacher is not None:
            teacher = teacher_probe(run_dir, Path(unlabeled), u_windows, teacher_threads, teacher_model)
        xu = unlabeled_features(net, Path(unlabeled), u_windows, ckpt.frontend)
        fits[TEACHER_LABELLED if teacher else SELF_TRAINED] = self_training(xu, *pseudo, teacher=teacher,
                                                                             copies=copies)
        st_info = {"unlabeled": str(unlabeled), "windows": len(xu), "high": pseudo[0], "low": pseudo[1]}
        if teacher is not None:
            from trainer.birdnet import TEACHER_INFO

            st_info["teacher"] = {**TEACHER_INFO, "probe_c": teacher.c, "outputs_used":
                                  "1024-d embedding: a logistic-regression probe on it labels the unlabeled "
                                  "windows the head learns from (training only)"}
    results = {name: _choose_c(fit, feats, data, run, folds, c_grid, ckpt.labels, seed, choose_on)
               for name, fit in fits.items()}
    chosen = max(results, key=lambda n: results[n]["score"])
    r = results[chosen]
    best, scores, w, b, how, extra = r["c"], r["scores"], r["w"], r["b"], r["how"], r["extra"]
    if st_info:
        st_info.update(used=chosen != "labelled",
                       scores={n: {str(c): round(v, 4) for c, v in res["scores"].items()} for n, res in results.items()},
                       scores_val_recordings={n: {str(c): round(v, 4) for c, v in res["unheard"].items()}
                                              for n, res in results.items() if res["unheard"]})
        how["self_training"] = st_info
        log.info("linear head: %s head chosen (%.4f against %.4f)", chosen, r["score"],
                 min(res["score"] for res in results.values()))
    fc = torch.nn.Linear(w.shape[1], w.shape[0])
    fc.weight.data = torch.from_numpy(w).float()
    fc.bias.data = torch.from_numpy(b).float()
    net.fc = fc
    state = without_resume_state(dict(ckpt.raw))
    if speed_copies > 0:
        how["speed_copies"] = speed_copies
    state.update(model={k: v.contiguous() for k, v in net.state_dict().items()}, thresholds={}, metrics={},
                 linear_head={"backbone": str(backbone_path), "c": best, **how, "stage1": stage1}, **extra)
    out = run_dir / out_name
    save_checkpoint(state, out)
    # as at the end of training: thresholds from validation, val and test metrics in the checkpoint
    finalize(out, run, torch.device("cpu"))
    if folds >= 2:
        mark_in_sample(out, folds, scores[best], r["unheard"].get(best))
    return out, {"c": best, **how}


def teacher_probe(run_dir: Path, unlabeled: Path, u_windows, threads: int, model=None, c: float = 1.0,
                  ) -> TeacherProbe:
    """BirdNET's embeddings of the train, validation and unlabeled windows (cached), as a probe."""
    from trainer.teacher_cache import compute_cache, labelled_windows, source_roots

    run = load_run_data(run_dir)
    groups = labelled_windows(run, ("train", "val"))
    labelled = groups["train"] + groups["val"]  # the order of the head's rows
    cache = compute_cache(run_dir, labelled + u_windows, source_roots(run, unlabeled), threads,
                          window_s=run.frontend.window_s, model=model)
    return TeacherProbe(cache.embeddings[cache.rows(labelled)], cache.embeddings[cache.rows(u_windows)], c)


def _choose_c(fit, feats, data, run: RunData, folds: int, c_grid, labels: list[str], seed: int,
              choose_on: str = POOLED) -> dict[str, Any]:
    """The best ``C`` for one way of fitting: its head, figures and checkpoint entries.

    ``score`` is the held-out figure the choice rests on: out-of-fold macro-AP when
    cross-fitting (pooled, or of the validation recordings with ``choose_on="unheard"``), else
    the validation split's macro-AP of a head fitted on train.
    """
    extra: dict[str, Any] = {}
    if folds >= 2:
        x = np.concatenate([feats["train"], feats["val"]])
        y = np.concatenate([data["train"].targets, data["val"].targets])
        known = np.concatenate([data["train"].known, data["val"].known])
        # the run's windows are in the order load_split_arrays read them; files as split.json names them
        files = [w.file for s in ("train", "val") for w in run.windows(s)]
        unheard = np.arange(len(x)) >= len(feats["train"])  # validation rows: never trained on
        cf = cross_fit(x, y, known, files, folds, c_grid, fit, labels, seed, unheard, choose_on)
        best, scores, unheard_scores = cf["c"], cf["cv_macro_ap"], cf["cv_macro_ap_unheard"] or {}
        # The shipped head is the mean of the fold heads (a linear head, so the mean of their
        # logits): the heads whose out-of-fold scores set the thresholds. A refit on all windows
        # has larger weights (about 14 % on nips4bplus) and fires where the thresholds never looked.
        w, b = cf["weights"].astype(np.float64).mean(axis=0), cf["biases"].astype(np.float64).mean(axis=0)
        extra[CROSSFIT] = {"folds": folds, "seed": seed, "c": best, "cv_macro_ap": scores,
                           "assignment": cf["assignment"], "weights": torch.from_numpy(cf["weights"]),
                           "biases": torch.from_numpy(cf["biases"])}
        how: dict[str, Any] = {"fit_on": "train+val (mean of the fold heads)", "cv_macro_ap": scores,
                               "cv_macro_ap_val_recordings": unheard_scores, "chosen_on": choose_on}
        score = cf["score"]
    else:
        scores, unheard_scores = {}, {}
        heads = {}
        rows = np.arange(len(feats["train"]))  # the train windows come first among the labelled rows
        for c in c_grid:
            w, b = fit(feats["train"], data["train"].targets, data["train"].known, c, seed, rows)
            probs = sigmoid(feats["val"] @ w.T + b)
            scores[c] = evaluate_scores(probs, data["val"].targets, data["val"].known, labels)["macro_ap"]
            heads[c] = (w, b)
            log.info("linear head C=%g: validation macro-AP %.4f", c, scores[c])
        best = max(scores, key=lambda k: scores[k])
        w, b = heads[best]
        how = {"fit_on": "train", "val_macro_ap": scores}
        score = scores[best]
    return {"c": best, "score": float(score), "scores": scores, "unheard": unheard_scores, "w": w, "b": b, "how": how, "extra": extra}


def load_backbone(path: Path) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """A ResNet50 without its fc (``fc`` is the identity) holding :func:`backbone_weights` of ``path``."""
    net = build_model(1, "none")
    net.fc = torch.nn.Identity()
    state, stage1 = backbone_weights(path)
    missing = net.load_state_dict(state, strict=False)
    if missing.missing_keys:
        raise SonotrapError(f"{path} is not a ResNet50 backbone ({len(missing.missing_keys)} weights missing)")
    return net, stage1


def backbone_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(ResNet50 weights, how they were made) from a state dict file or a bundle.

    A bundle (directory, ``.tar.gz`` or its ``model.onnx``) gives its own backbone, dequantized
    (:mod:`trainer.onnx_backbone`): a head for new labels needs no FP32 checkpoint. Its
    manifest's stage-1 record, when it has one, travels on into the new bundle's provenance.
    """
    from edge.models.archive import is_archive
    from trainer.onnx_backbone import state_dict_from_bundle, state_dict_from_onnx

    if path.is_dir() or is_archive(path):
        state, info = state_dict_from_bundle(path)
    elif path.suffix == ".onnx":
        state, info = state_dict_from_onnx(path), {"model": str(path)}
    else:
        return torch.load(path, map_location="cpu", weights_only=True), _stage1_summary(path)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, {"from_bundle": info}


def _stage1_summary(backbone_path: Path) -> dict[str, Any] | None:
    """How the backbone was distilled (its ``distill/summary.json``), for the bundle's provenance."""
    path = backbone_path.parent / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def mark_in_sample(path: Path, folds: int, cv_macro_ap: float, val_recordings: float | None = None) -> None:
    """A cross-fitted head was fitted on the validation windows: its figure there is not evidence.

    ``val`` becomes ``val_in_sample`` and ``cross_fit`` carries the held-out (out-of-fold)
    macro-AP, so ``bundle inspect`` and reports do not show an in-sample 1.0 as validation.
    """
    ckpt = load_checkpoint(path)
    metrics = dict(ckpt.metrics)
    if "val" in metrics:
        metrics["val_in_sample"] = metrics.pop("val")
    metrics["cross_fit"] = {"macro_ap": cv_macro_ap, "folds": folds,
                            "note": "out-of-fold over the pooled train + validation windows"}
    if val_recordings is not None:  # the recordings the backbone never trained on, not even their audio
        metrics["cross_fit"]["val_recordings_macro_ap"] = val_recordings
    update_checkpoint(ckpt, metrics=metrics)

