"""Label selection, recording-level splits and 2-s windows on hand-built records (no audio needed)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge.errors import SonotrapError
from trainer.annotations import Annotation, Recording, Source
from trainer.labels import LabelSelection, read_mapping, select_labels
from trainer.split import SPLITS, read_split, split_recordings, write_split
from trainer.windows import (
    Window,
    WindowConfig,
    jitter_start,
    make_windows,
    overlaps_enough,
    place,
    tile_starts,
)

# ---------------------------------------------------------------- labels


def _source(pairs: list[tuple[str, str]], absent: list[tuple[str, str]] = ()) -> Source:
    """Annotations from (file, label) pairs, one 0.2-s call each; ``absent`` = present False."""
    files = sorted({f for f, _ in list(pairs) + list(absent)})
    recs = [Recording(f, 10.0, 22050) for f in files]
    anns = [Annotation(f, 1.0 + 0.5 * i, 1.2 + 0.5 * i, lab) for i, (f, lab) in enumerate(pairs)]
    anns += [Annotation(f, 5.0, 5.5, lab, False) for f, lab in absent]
    return Source(Path("/data"), recs, anns, ["an earlier problem"])


@pytest.fixture
def birds() -> Source:
    return _source(
        [("r1", "Turmer"), ("r1", "Turmer"), ("r2", "Turmer"),
         ("r2", "Erirub_call"), ("r3", "Erirub_song"), ("r3", "Erirub_song"),
         ("r4", "Parmaj"), ("r4", "Parmaj"),
         ("r5", "Cyacae")],
        absent=[("r5", "Sylatr")],
    )


def test_select_labels_min_examples(birds):
    src, kept, counts = select_labels(birds, LabelSelection(min_examples=2))
    assert kept == ["Erirub_song", "Parmaj", "Turmer"]
    assert counts == {"Erirub_song": 2, "Parmaj": 2, "Turmer": 3}
    # Dropped labels stay in the data ("something else is calling here").
    assert Counter(a.label for a in src.annotations) == Counter(a.label for a in birds.annotations)
    assert src.problems == ["an earlier problem"] and src.recordings == birds.recordings


def test_select_labels_counts_only_present_calls(birds):
    # Sylatr only has a validated absence: it is a known label, but with 0 examples.
    _, kept, counts = select_labels(birds, LabelSelection(min_examples=0))
    assert "Sylatr" in kept and counts["Sylatr"] == 0
    _, kept, _ = select_labels(birds, LabelSelection(min_examples=1))
    assert "Sylatr" not in kept and "Cyacae" in kept


def test_select_labels_include_and_exclude(birds):
    _, kept, counts = select_labels(birds, LabelSelection(include=["Parmaj", "Cyacae"]))
    assert kept == ["Cyacae", "Parmaj"] and counts == {"Cyacae": 1, "Parmaj": 2}
    _, kept, _ = select_labels(birds, LabelSelection(exclude=["Turmer", "Cyacae"]))
    assert kept == ["Erirub_call", "Erirub_song", "Parmaj"]
    # include + min_examples together: Cyacae has 1 call only.
    _, kept, _ = select_labels(birds, LabelSelection(min_examples=2, include=["Parmaj", "Cyacae"]))
    assert kept == ["Parmaj"]


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_select_labels_unknown_label_is_a_clear_error(birds, field):
    sel = LabelSelection(**{field: ["Turmer", "Turmerr"]})
    with pytest.raises(SonotrapError) as err:
        select_labels(birds, sel)
    msg = str(err.value)
    assert "'Turmerr'" in msg and "does not occur" in msg and "\n" not in msg


def test_select_labels_nothing_left_is_an_error(birds):
    with pytest.raises(SonotrapError, match="no label is left"):
        select_labels(birds, LabelSelection(min_examples=50))


def test_merge_mapping_from_csv(birds, tmp_path):
    mapping = tmp_path / "merge.csv"
    mapping.write_text("from,to\n# call and song are one class\nErirub_call,Erirub\n\nErirub_song, Erirub \n")
    merge = read_mapping(mapping)
    assert merge == {"Erirub_call": "Erirub", "Erirub_song": "Erirub"}
    src, kept, counts = select_labels(birds, LabelSelection(min_examples=3, merge=merge))
    assert kept == ["Erirub", "Turmer"]  # 1 call + 2 songs = 3; neither reached 3 alone
    assert counts == {"Erirub": 3, "Turmer": 3}
    assert not {"Erirub_call", "Erirub_song"} & {a.label for a in src.annotations}
    assert sum(a.label == "Erirub" for a in src.annotations) == 3
    assert {a.label for a in birds.annotations} >= {"Erirub_call"}  # input left alone
    # After merging, include/exclude name the merged label; the old names are unknown.
    _, kept, _ = select_labels(birds, LabelSelection(include=["Erirub"], merge=merge))
    assert kept == ["Erirub"]
    with pytest.raises(SonotrapError, match="Erirub_call"):
        select_labels(birds, LabelSelection(include=["Erirub_call"], merge=merge))


def test_read_mapping_without_header(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("Erirub_call,Erirub\nErirub_song,Erirub\n")
    assert read_mapping(p) == {"Erirub_call": "Erirub", "Erirub_song": "Erirub"}


@pytest.mark.parametrize("text,row", [
    ("from,to\nErirub_call,Erirub\nErirub_song\n", 3),   # one column
    ("Erirub_call,\n", 1),                                # empty 'to'
    ("from,to\n,Erirub\n", 2),                            # empty 'from'
])
def test_read_mapping_bad_rows(tmp_path, text, row):
    p = tmp_path / "merge.csv"
    p.write_text(text)
    with pytest.raises(SonotrapError) as err:
        read_mapping(p)
    msg = str(err.value)
    assert msg.startswith(f"merge.csv row {row}: expected 'from,to'") and "\n" not in msg


def test_read_mapping_missing_file(tmp_path):
    with pytest.raises(SonotrapError, match="does not exist"):
        read_mapping(tmp_path / "nope.csv")


# ---------------------------------------------------------------- split


def _two_class_data(n_per_class: int = 20, n_negative: int = 10):
    recs, anns = [], []
    for cls in ("A", "B"):
        for i in range(n_per_class):
            f = f"{cls}{i:02d}.wav"
            recs.append(Recording(f, 6.0, 22050))
            anns += [Annotation(f, 1.0, 1.3, cls), Annotation(f, 4.0, 4.4, cls)]
    for i in range(n_negative):
        recs.append(Recording(f"neg{i:02d}.wav", 6.0, 22050))
    return recs, anns


def _labels_in(split: list[str], anns: list[Annotation]) -> Counter:
    """Recordings per label among the files of ``split``."""
    files = set(split)
    return Counter(label for _, label in {(a.file, a.label) for a in anns if a.file in files})


def test_split_is_by_recording_and_covers_every_recording():
    recs, anns = _two_class_data()
    split = split_recordings(recs, anns, ["A", "B"], (0.6, 0.2, 0.2), seed=1)
    assert set(split) == set(SPLITS)
    every = [f for s in SPLITS for f in split[s]]
    assert sorted(every) == sorted(r.file for r in recs)  # each recording exactly once
    assert len(every) == len(set(every))
    assert [len(split[s]) for s in SPLITS] == [30, 10, 10]
    # So the windows of a recording never end up in two splits.
    where = {f: s for s in SPLITS for f in split[s]}
    windows = make_windows(recs, anns, ["A", "B"], WindowConfig())
    per_file: dict[str, set[str]] = {}
    for w in windows:
        per_file.setdefault(w.file, set()).add(where[w.file])
    assert len(per_file) == len(recs) and all(len(v) == 1 for v in per_file.values())


def test_split_is_stratified():
    recs, anns = _two_class_data()
    split = split_recordings(recs, anns, ["A", "B"], (0.6, 0.2, 0.2), seed=3)
    for s, want in zip(SPLITS, (12, 4, 4), strict=True):
        labs = _labels_in(split[s], anns)
        assert labs["A"] == want and labs["B"] == want, (s, labs)
        assert any(f.startswith("neg") for f in split[s])


def test_split_rare_label_reaches_every_split():
    recs, anns = _two_class_data(n_per_class=20, n_negative=0)
    for i in range(5):
        f = f"C{i}.wav"
        recs.append(Recording(f, 6.0, 22050))
        anns.append(Annotation(f, 2.0, 2.5, "C"))
    for seed in range(5):
        split = split_recordings(recs, anns, ["A", "B", "C"], (0.6, 0.2, 0.2), seed=seed)
        assert [_labels_in(split[s], anns)["C"] for s in SPLITS] == [3, 1, 1]


def test_split_ignores_labels_not_selected_and_absences():
    recs = [Recording(f"r{i}", 5.0, 22050) for i in range(10)]
    anns = [Annotation(f"r{i}", 1.0, 2.0, "A") for i in range(5)]
    anns += [Annotation(f"r{i}", 1.0, 2.0, "Z") for i in range(5, 10)]
    anns += [Annotation("r9", 3.0, 4.0, "A", False)]
    split = split_recordings(recs, anns, ["A"], (0.6, 0.2, 0.2), seed=0)
    assert sorted(f for s in SPLITS for f in split[s]) == sorted(r.file for r in recs)
    assert [_labels_in(split[s], [a for a in anns if a.label == "A" and a.present])["A"] for s in SPLITS] == [3, 1, 1]


def test_split_is_deterministic_for_a_seed():
    recs, anns = _two_class_data()
    a = split_recordings(recs, anns, ["A", "B"], (0.6, 0.2, 0.2), seed=7)
    b = split_recordings(list(recs), list(anns), ["A", "B"], (0.6, 0.2, 0.2), seed=7)
    assert a == b
    others = [split_recordings(recs, anns, ["A", "B"], (0.6, 0.2, 0.2), seed=s) for s in (8, 9, 10)]
    assert any(o["test"] != a["test"] for o in others)


def test_split_zero_fraction_and_bad_fractions():
    recs, anns = _two_class_data(n_per_class=5, n_negative=2)
    split = split_recordings(recs, anns, ["A", "B"], (0.8, 0.2, 0.0), seed=0)
    assert split["test"] == [] and len(split["train"]) + len(split["val"]) == len(recs)
    for bad in [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)]:
        with pytest.raises(SonotrapError, match="fractions"):
            split_recordings(recs, anns, ["A", "B"], bad, seed=0)


def test_write_and_read_split_round_trip(tmp_path):
    recs, anns = _two_class_data(n_per_class=6, n_negative=3)
    split = split_recordings(recs, anns, ["A", "B"], (0.6, 0.2, 0.2), seed=5)
    path = tmp_path / "split.json"
    write_split(path, split, seed=5, fractions=(0.6, 0.2, 0.2))
    assert read_split(path) == split
    data = json.loads(path.read_text())
    assert data["format"] == "sonotrap-split/1" and data["seed"] == 5 and data["fractions"] == [0.6, 0.2, 0.2]


def test_read_split_errors(tmp_path):
    with pytest.raises(SonotrapError, match="cannot be read"):
        read_split(tmp_path / "nope.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(SonotrapError, match="cannot be read"):
        read_split(garbage)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"train": ["a"], "val": []}))
    with pytest.raises(SonotrapError, match="test"):
        read_split(partial)


# ---------------------------------------------------------------- windows

W = 2.0


def _call_windows(windows: list[Window]) -> list[Window]:
    return [w for w in windows if w.is_call]


def test_long_call_yields_ceil_windows_spread_over_it():
    rec = Recording("r.wav", 10.0, 22050)
    call = Annotation("r.wav", 1.0, 6.0, "A")  # 5 s -> ceil(5 / 2) = 3 windows
    ws = _call_windows(make_windows([rec], [call], ["A"], WindowConfig(negatives=False)))
    assert len(ws) == 3
    assert [w.start_s for w in ws] == pytest.approx([1.0 + 5 / 6 - 1.0, 3.5 - 1.0, 6.0 - 5 / 6 - 1.0])
    assert all(w.end_s - w.start_s == pytest.approx(W) for w in ws)
    # The pieces tile the call: each window anchors on its own third, and contains it.
    assert [w.call_start_s for w in ws] == pytest.approx([1.0, 1.0 + 5 / 3, 1.0 + 10 / 3])
    assert [w.call_end_s for w in ws] == pytest.approx([1.0 + 5 / 3, 1.0 + 10 / 3, 6.0])
    for w in ws:
        assert w.start_s <= w.call_start_s and w.call_end_s <= w.end_s
        assert w.positives == ("A",)
    # Together the windows cover the whole call.
    assert ws[0].start_s <= 1.0 and ws[-1].end_s >= 6.0
    assert all(a.end_s >= b.start_s for a, b in zip(ws, ws[1:], strict=False))


@pytest.mark.parametrize("length,n", [(0.3, 1), (2.0, 1), (2.1, 2), (4.0, 2), (4.01, 3), (7.9, 4)])
def test_number_of_windows_per_call(length, n):
    rec = Recording("r.wav", 20.0, 22050)
    ws = make_windows([rec], [Annotation("r.wav", 5.0, 5.0 + length, "A")], ["A"], WindowConfig(negatives=False))
    assert len(ws) == n


@pytest.mark.parametrize("call,start", [
    ((4.0, 4.4), 3.2),     # centred
    ((0.1, 0.3), 0.0),     # near the start: clipped to 0
    ((0.0, 0.05), 0.0),
    ((9.8, 9.95), 8.0),    # near the end: window ends at the recording's end
    ((8.7, 8.9), 7.8),     # centred, just fits
])
def test_short_call_window_is_centred_and_clipped(call, start):
    rec = Recording("r.wav", 10.0, 22050)
    (w,) = make_windows([rec], [Annotation("r.wav", *call, "A")], ["A"], WindowConfig(negatives=False))
    assert w.start_s == pytest.approx(start) and w.end_s == pytest.approx(start + W)
    assert (w.call_start_s, w.call_end_s) == call
    assert 0.0 <= w.start_s and w.end_s <= 10.0 + 1e-9


def test_place_in_short_recording_starts_at_zero():
    assert place(0.7, 1.5, W) == 0.0
    assert place(5.0, 10.0, W) == 4.0
    assert place(9.9, 10.0, W) == 8.0


@pytest.mark.parametrize("neighbour,labelled", [
    ((4.8, 6.8), False),   # 0.4 s overlap: 20 % of the 2-s call and of the window
    ((4.6, 6.6), True),    # 0.6 s overlap: 30 % of the call (and of the window)
    ((4.6, 10.0), True),   # 0.6 s: 11 % of the call but 30 % of the window
    ((4.8, 9.8), False),   # 0.4 s: 8 % of the call, 20 % of the window
    ((5.15, 5.25), True),  # short call half inside: 50 % of the call
    ((5.18, 5.28), False), # 20 % of the call, 1 % of the window
    ((3.5, 3.6), True),    # wholly inside
])
def test_window_labels_need_min_overlap_of_call_or_window(neighbour, labelled):
    rec = Recording("r.wav", 10.0, 22050)
    anchor = Annotation("r.wav", 4.0, 4.4, "A")  # window 3.2-5.2
    other = Annotation("r.wav", *neighbour, "B")
    ws = make_windows([rec], [anchor, other], ["A", "B"], WindowConfig(min_overlap=0.25, negatives=False))
    (w,) = [w for w in ws if w.call_start_s == 4.0]
    assert (w.start_s, w.end_s) == pytest.approx((3.2, 5.2))
    assert w.positives == (("A", "B") if labelled else ("A",))
    assert w.known is None  # complete recording: every class known


def test_overlaps_enough_thresholds():
    assert overlaps_enough(0.0, 1.0, 0.7, 2.7, 0.3)      # 0.3 of the call
    assert not overlaps_enough(0.0, 1.0, 0.8, 2.8, 0.3)  # 0.2 of the call, 0.1 of the window
    assert not overlaps_enough(0.0, 1.0, 1.0, 3.0, 0.0)  # touching is no overlap
    assert overlaps_enough(0.0, 10.0, 2.0, 4.0, 0.9)     # the whole window


def test_dropped_label_calls_do_not_label_windows():
    rec = Recording("r.wav", 10.0, 22050)
    anns = [Annotation("r.wav", 4.0, 4.4, "A"), Annotation("r.wav", 4.1, 4.3, "Z")]
    ws = make_windows([rec], anns, ["A"], WindowConfig(negatives=False))
    assert [(w.call_start_s, w.positives) for w in ws] == [(4.0, ("A",))]


def test_incomplete_recording_labels_are_three_state():
    rec = Recording("r.wav", 10.0, 22050, complete=False)
    anns = [Annotation("r.wav", 4.0, 4.4, "A", True), Annotation("r.wav", 4.5, 5.0, "B", False),
            Annotation("r.wav", 4.6, 4.8, "C", None)]
    ws = make_windows([rec], anns, ["A", "B", "C"], WindowConfig())
    assert all(w.is_call for w in ws)  # no negative tiles in an incomplete recording
    by_anchor = {w.call_start_s: w for w in ws}
    assert set(by_anchor) == {4.0, 4.5}  # present None never anchors a window
    w = by_anchor[4.0]
    assert w.positives == ("A",) and w.known == ("A", "B")  # C unknown


@pytest.mark.parametrize("duration,starts", [
    (10.0, [0.0, 2.0, 4.0, 6.0, 8.0]),
    (9.5, [0.0, 2.0, 4.0, 6.0, 7.5]),   # 1.5-s remainder > half a window: a last tile at the end
    (9.0, [0.0, 2.0, 4.0, 6.0]),        # 1.0-s remainder: dropped
    (2.0, [0.0]),
    (1.5, [0.0]),
])
def test_tile_starts(duration, starts):
    assert tile_starts(duration, W) == pytest.approx(starts)


def test_negative_tiles_skip_tiles_touching_a_call():
    recs = [Recording("r.wav", 10.0, 22050), Recording("quiet.wav", 5.0, 22050)]
    anns = [Annotation("r.wav", 3.9, 4.1, "A"),   # touches tiles 2-4 and 4-6
            Annotation("r.wav", 9.0, 9.2, "Z")]   # a dropped label: its tile stays negative
    ws = make_windows(recs, anns, ["A"], WindowConfig())
    neg = [(w.file, w.start_s) for w in ws if not w.is_call]
    assert neg == [("r.wav", 0.0), ("r.wav", 6.0), ("r.wav", 8.0), ("quiet.wav", 0.0), ("quiet.wav", 2.0)]
    for w in ws:
        if not w.is_call:
            assert w.positives == () and w.known is None and math.isnan(w.call_end_s)
    assert len(_call_windows(ws)) == 1
    assert not [w for w in make_windows(recs, anns, ["A"], WindowConfig(negatives=False)) if not w.is_call]


def test_incomplete_recordings_get_no_negative_tiles():
    recs = [Recording("v.wav", 10.0, 22050, complete=False), Recording("quiet.wav", 4.0, 22050, complete=False)]
    anns = [Annotation("v.wav", 1.0, 1.5, "A", True)]
    ws = make_windows(recs, anns, ["A"], WindowConfig())
    assert [w.file for w in ws] == ["v.wav"] and ws[0].is_call


@pytest.mark.parametrize("call,duration", [
    ((4.0, 4.4), 10.0), ((0.1, 0.3), 10.0), ((9.7, 9.95), 10.0), ((2.0, 3.9), 10.0), ((0.5, 1.0), 1.5),
    ((1.0, 8.0), 10.0),  # long call: each piece stays inside its window
])
def test_jitter_keeps_the_call_inside_the_window(call, duration):
    rec = Recording("r.wav", duration, 22050)
    ws = make_windows([rec], [Annotation("r.wav", *call, "A")], ["A"], WindowConfig(negatives=False))
    rng = np.random.default_rng(0)
    for w in ws:
        starts = np.array([jitter_start(w, duration, 1.0, rng) for _ in range(500)])
        ends = starts + (w.end_s - w.start_s)
        assert np.all(starts <= w.call_start_s + 1e-9), w
        assert np.all(ends >= w.call_end_s - 1e-9), w
        assert np.all(starts >= 0.0)
        assert np.all(starts <= max(duration - W, 0.0) + 1e-9)
        assert np.all(np.abs(starts - w.start_s) <= 1.0 + 1e-9)
        # And it does move the window over all of the room it has.
        lo = max(w.start_s - 1.0, w.call_end_s - W, 0.0)
        hi = min(w.start_s + 1.0, w.call_start_s, max(duration - W, 0.0))
        if hi - lo > 0.05:
            assert starts.min() < lo + 0.1 * (hi - lo) and starts.max() > hi - 0.1 * (hi - lo)
        else:
            assert np.all(starts == pytest.approx(w.start_s, abs=0.05))


def test_jitter_of_negative_tile_stays_in_recording():
    w = Window("r.wav", 8.0, 10.0, math.nan, math.nan, (), None)
    rng = np.random.default_rng(1)
    starts = [jitter_start(w, 10.0, 0.5, rng) for _ in range(200)]
    assert min(starts) >= 7.5 and max(starts) <= 8.0 and max(starts) - min(starts) > 0.1
