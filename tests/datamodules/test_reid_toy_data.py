"""Synthetic pedestrian tracklets (datamodules/toy/pedestrians.py): MARS layout, determinism, learnable identities."""

import hashlib
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datamodules.toy import ensure_written
from datamodules.toy.pedestrians import (
    JUNK,
    camera_scene,
    identity_attributes,
    render_tracklet,
    write_synthetic_tracklets,
)

OPTIONS = dict(train_ids=8, test_ids=10, tracklets_per_id=3, frames_per_tracklet=(4, 7), cameras=4, junk_tracklets=2,
               seed=0)  # fmt: skip

NAME = re.compile(r"(\d{4}|00-1)C(\d)T(\d{4})F(\d{3})\.jpg")  # MARS: person, camera, tracklet, frame


@pytest.fixture(scope="module")
def toy_a(tmp_path_factory):
    return ensure_written(tmp_path_factory.mktemp("reid") / "a", write_synthetic_tracklets, **OPTIONS, domain="a")


@pytest.fixture(scope="module")
def toy_b(tmp_path_factory):
    return ensure_written(tmp_path_factory.mktemp("reid") / "b", write_synthetic_tracklets, **OPTIONS, domain="b")


def load(root, split):
    """The name list and the track table (int rows: start, end, pid, camid) of a split."""
    names = (root / "info" / f"{split}_name.txt").read_text().splitlines()
    mat = scipy.io.loadmat(root / "info" / f"tracks_{split}_info.mat")
    assert f"track_{split}_info" in mat
    table = mat[f"track_{split}_info"]
    assert table.ndim == 2 and table.shape[1] == 4
    assert np.array_equal(table, np.round(table))
    return names, table.astype(int)


def tracklet_frames(root, split, names, row):
    start, end = row[0], row[1]
    return np.stack(
        [np.asarray(Image.open(root / f"bbox_{split}" / n[:4] / n), np.float32) for n in names[start - 1 : end]]
    )


def test_layout_counts_and_tables_agree(toy_a):
    lo, hi = OPTIONS["frames_per_tracklet"]
    train_pids = list(range(1, OPTIONS["train_ids"] + 1))
    test_pids = list(range(OPTIONS["train_ids"] + 1, OPTIONS["train_ids"] + OPTIONS["test_ids"] + 1))
    assert sorted(p.name for p in (toy_a / "bbox_train").iterdir()) == [f"{p:04d}" for p in train_pids]
    assert sorted(p.name for p in (toy_a / "bbox_test").iterdir()) == [JUNK] + [f"{p:04d}" for p in test_pids]
    for split, pids, junk in (("train", train_pids, 0), ("test", test_pids, OPTIONS["junk_tracklets"])):
        names, table = load(toy_a, split)
        on_disk = sorted(p.name for p in (toy_a / f"bbox_{split}").rglob("*.jpg"))
        assert sorted(names) == on_disk and len(set(names)) == len(names)
        assert len(table) == len(pids) * OPTIONS["tracklets_per_id"] + junk
        # the 1-based, inclusive [start, end] ranges tile the name list exactly, in order
        assert table[0, 0] == 1 and table[-1, 1] == len(names)
        assert np.array_equal(table[1:, 0], table[:-1, 1] + 1)
        assert np.all((table[:, 1] - table[:, 0] + 1 >= lo) & (table[:, 1] - table[:, 0] + 1 <= hi))
        for start, end, pid, cam in table:
            parsed = [NAME.fullmatch(n).groups() for n in names[start - 1 : end]]
            assert {p[:3] for p in parsed} == {(JUNK if pid == -1 else f"{pid:04d}", str(cam), parsed[0][2])}
            assert [p[3] for p in parsed] == [f"{f:03d}" for f in range(1, end - start + 2)]
        assert sorted(set(table[:, 2]) - {-1}) == pids
        for pid in pids:  # tracklets_per_id <= cameras: every tracklet of a person from its own camera
            cams = table[table[:, 2] == pid, 3]
            assert len(cams) == OPTIONS["tracklets_per_id"] and len(set(cams)) == len(cams)
            assert set(cams) <= set(range(1, OPTIONS["cameras"] + 1))
    with Image.open(toy_a / "bbox_train" / "0001" / names_of(toy_a, "train")[0]) as img:
        assert img.size == (32, 64) and img.format == "JPEG"


def names_of(root, split):
    return (root / "info" / f"{split}_name.txt").read_text().splitlines()


def test_queries_have_cross_camera_gallery_and_junk_is_gallery_only(toy_a):
    _, test = load(toy_a, "test")
    mat = scipy.io.loadmat(toy_a / "info" / "query_IDX.mat")
    query = mat["query_IDX"]
    assert query.shape == (1, OPTIONS["test_ids"])
    query = query[0].astype(int) - 1
    assert np.all((query >= 0) & (query < len(test)))
    assert sorted(test[query, 2]) == sorted(set(test[:, 2]) - {-1})  # one query per test person
    gallery = np.setdiff1d(np.arange(len(test)), query)
    for q in query:
        mine = gallery[test[gallery, 2] == test[q, 2]]
        assert np.any(test[mine, 3] != test[q, 3])
    junk = test[test[:, 2] == -1]
    assert len(junk) == OPTIONS["junk_tracklets"] and -1 not in test[query, 2]
    assert len(list((toy_a / "bbox_test" / JUNK).glob(f"{JUNK}C*T*F*.jpg"))) == int((junk[:, 1] - junk[:, 0] + 1).sum())


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".jpg", ".txt")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_and_independent_of_workers(tmp_path):
    small = dict(OPTIONS, train_ids=2, test_ids=2, tracklets_per_id=2, frames_per_tracklet=(2, 3), junk_tracklets=1)
    write_synthetic_tracklets(tmp_path / "one", **small)
    write_synthetic_tracklets(tmp_path / "two", **small, workers=2)
    write_synthetic_tracklets(tmp_path / "other", **dict(small, seed=4))
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert digest(tmp_path / "one") != digest(tmp_path / "other")
    for name, key in (("tracks_test_info", "track_test_info"), ("query_IDX", "query_IDX")):
        mats = [scipy.io.loadmat(tmp_path / run / "info" / f"{name}.mat")[key] for run in ("one", "two")]
        assert np.array_equal(*mats)


def torso_colours(root):
    """(pid, mean colour of the central torso region) of every non-junk tracklet of both splits."""
    out = []
    for split in ("train", "test"):
        names, table = load(root, split)
        for row in table[table[:, 2] > 0]:
            frames = tracklet_frames(root, split, names, row)
            h, w = frames.shape[1:3]
            out.append(
                (row[2], frames[:, int(0.25 * h) : int(0.45 * h), int(0.35 * w) : int(0.65 * w)].mean((0, 1, 2)))
            )
    return np.array([p for p, _ in out]), np.stack([c for _, c in out])


@pytest.mark.parametrize("domain, bound", [("a", 0.75), ("b", 0.85)])
def test_identity_is_consistent_across_cameras(toy_a, toy_b, domain, bound):
    pids, colours = torso_colours(toy_a if domain == "a" else toy_b)
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    same = (pids[:, None] == pids[None]) & ~np.eye(len(pids), dtype=bool)
    other = pids[:, None] != pids[None]
    assert dist[same].mean() < bound * dist[other].mean()
    np.fill_diagonal(dist, np.inf)  # nearest neighbour by shirt colour alone: far above chance, far from perfect
    rank1 = np.mean(pids[dist.argmin(1)] == pids)
    chance = (OPTIONS["tracklets_per_id"] - 1) / (len(pids) - 1)
    assert 2 * chance < rank1 < 0.9


def background_colours(root):
    """Mean colour of the top corners (background) of every tracklet of the test split."""
    names, table = load(root, "test")
    out = []
    for row in table:
        frames = tracklet_frames(root, "test", names, row)
        h, w = frames.shape[1:3]
        corners = np.concatenate([frames[:, : h // 5, : w // 5], frames[:, : h // 5, -w // 5 :]], axis=2)
        out.append(corners.reshape(-1, 3).mean(0))
    return np.stack(out)


def test_domains_differ(toy_a, toy_b):
    a, b = background_colours(toy_a), background_colours(toy_b)
    assert np.linalg.norm(a.mean(0) - b.mean(0)) > 40
    # domain b's cool light and sky / glass / pastel scenes: a threshold on blue minus red tells the domains apart
    a_cool, b_cool = a[:, 2] - a[:, 0], b[:, 2] - b[:, 0]
    threshold = (a_cool.mean() + b_cool.mean()) / 2
    assert np.mean(np.concatenate([a_cool < threshold, b_cool > threshold])) >= 0.95
    # domain b people are new people, and its cameras are other scenes
    assert identity_attributes(7, "a", 0) != identity_attributes(7, "b", 0)
    assert identity_attributes(7, "a", 0) == identity_attributes(7, "a", 0) != identity_attributes(8, "a", 0)
    assert camera_scene(1, "a")["wall_kind"] != camera_scene(1, "b")["wall_kind"]


def test_render_tracklet_walks_and_validates_options(tmp_path):
    ident = identity_attributes(1, "a", 0)
    frames = render_tracklet(ident, camera=2, n_frames=5, height=64, width=32, domain="a", seed=11)
    assert len(frames) == 5 and all(f.size == (32, 64) and f.mode == "RGB" for f in frames)
    # 4 x 4 block means average the pixel noise away: what still changes between frames is the walk
    blocks = np.stack([np.asarray(f, np.float32) for f in frames]).reshape(5, 16, 4, 8, 4, 3).mean((2, 4))
    assert np.abs(np.diff(blocks, axis=0)).mean() > 3
    big = render_tracklet(ident, camera=2, n_frames=2, height=256, width=128, domain="a", seed=11)
    assert big[0].size == (128, 256)
    for bad in (dict(domain="c"), dict(cameras=10), dict(tracklets_per_id=1), dict(frames_per_tracklet=(5, 4))):
        with pytest.raises(ValueError):
            write_synthetic_tracklets(tmp_path / "bad", **dict(OPTIONS, **bad))
