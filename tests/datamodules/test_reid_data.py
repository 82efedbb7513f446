"""Video re-ID data (datamodules/tracklets.py): MARS, DukeMTMC-VideoReID and LS-VID readers on miniatures written
here, frame sampling, the P x K sampler, the clip-consistent transform and the DataModule."""

import json
import logging
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datamodules.tracklets import (
    ClipTransform,
    PKSampler,
    Tracklet,
    TrackletDataModule,
    TrackletEvalDataset,
    TrackletSplits,
    collate_eval,
    dense_clips,
    filter_single_camera_queries,
    read_duke,
    read_lsvid,
    read_mars,
    read_tracklets,
    restricted_random_indices,
)
from experiments.errors import DataError

# ---------------------------------------------------------------------------------------------------------------
# Miniature writers


def write_jpeg(path: Path, color=(128, 128, 128), size=(4, 8)) -> None:
    """A tiny JPEG (PIL size is width x height: 4 x 8 by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)


# (pid, camera, frames) per tracklet; the test table's rows in this order; query rows are 1-based
MARS_TRAIN = [(1, 1, 3), (1, 2, 2), (2, 1, 3), (3, 3, 4), (-1, 1, 2)]
MARS_TEST = [(4, 1, 3), (4, 2, 2), (5, 1, 2), (5, 3, 3), (5, 1, 2), (6, 2, 2), (6, 2, 3), (-1, 1, 2), (-1, 2, 2)]
MARS_QUERY_ROWS = [1, 3, 6, 9]


def mars_name(pid: int, cam: int, track: int, frame: int) -> str:
    prefix = "00-1" if pid == -1 else f"{pid:04d}"
    return f"{prefix}C{cam}T{track:04d}F{frame:03d}.jpg"


def write_mars(root: Path, train=MARS_TRAIN, test=MARS_TEST, query_rows=MARS_QUERY_ROWS) -> dict:
    """A MARS miniature; returns the expected frame paths of every row per split."""
    info = root / "info"
    info.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, spec in (("train", train), ("test", test)):
        names, rows, frames = [], [], []
        for track, (pid, cam, n) in enumerate(spec, start=1):
            start = len(names) + 1
            tracklet = [mars_name(pid, cam, track, f) for f in range(1, n + 1)]
            for name in tracklet:
                write_jpeg(root / f"bbox_{split}" / name[:4] / name, (40 * cam, 20 * max(pid, 0), 0))
            names += tracklet
            rows.append([start, len(names), pid, cam])
            frames.append(tuple(str((root / f"bbox_{split}" / n[:4] / n).absolute()) for n in tracklet))
        (info / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        scipy.io.savemat(info / f"tracks_{split}_info.mat", {f"track_{split}_info": np.array(rows, dtype=np.float64)})
        expected[split] = frames
    scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.array([query_rows], dtype=np.float64)})
    return expected


def duke_frame(pid: int, cam: int, frame: int, new: bool) -> str:
    if new:
        return f"{pid:04d}_C{cam}_F{frame:04d}_X{30000 + frame}.jpg"
    return f"{pid:04d}C{cam}F{frame:04d}X{30000 + frame}.jpg"


def write_duke(root: Path) -> None:
    """train: 2 ids (one tracklet mixing both name formats), query: 1 id, gallery: 2 ids."""
    spec = {
        "train": [(1, 1, 1, [(2, False), (1, True), (3, True)]), (2, 1, 6, [(5, True), (6, True)]),
                  (2, 2, 1, [(7, False)])],
        "query": [(3, 1, 2, [(10, False), (11, False)])],
        "gallery": [(3, 1, 3, [(20, True)]), (4, 1, 1, [(1, False), (2, False)])],
    }  # fmt: skip
    for split, tracklets in spec.items():
        for pid, track, cam, frames in tracklets:
            for frame, new in frames:
                write_jpeg(root / split / f"{pid:04d}" / f"{track:04d}" / duke_frame(pid, cam, frame, new))


# LS-VID: (list, pid, camera, track id, frame numbers) ; the frame number is not zero-padded so that name order and
# frame order differ (9 < 10)
LSVID_TRAIN = [(1, 2, 1, [10, 9, 11]), (1, 5, 2, [3, 4]), (2, 3, 3, [1])]
LSVID_TEST = [(7, 1, 4, [5, 6]), (7, 2, 5, [1, 2]), (8, 4, 6, [9, 10]), (8, 5, 7, [2])]
LSVID_QUERY_ROWS = [1, 3]


def write_lsvid(root: Path, layout: str, query_key: str = "query") -> None:
    lists = root / "info" / "list_sequence" if layout == "loaders" else root / "list_sequence"
    data = root / "info" / "data" if layout == "loaders" else root / "test" / "data"
    lists.mkdir(parents=True)
    data.mkdir(parents=True)
    for split, spec in (("train", LSVID_TRAIN), ("test", LSVID_TEST)):
        lines = []
        for pid, cam, track, frames in spec:
            prefix = f"tracklet_{split}/{pid:04d}/{track:04d}"
            lines.append(f"{prefix} {pid}")
            for f in frames:
                write_jpeg(root / f"{prefix}_{f}_{cam:02d}_0001.jpg")
        (lists / f"list_seq_{split}.txt").write_text("\n".join(lines) + "\n")
    with h5py.File(data / "info_test.mat", "w") as f:
        f.create_dataset(query_key, data=np.array([LSVID_QUERY_ROWS], dtype=np.float64))


def relative(tracklets: list[Tracklet], root: Path) -> list[tuple]:
    return [(tuple(str(Path(p).relative_to(root.absolute())) for p in t.frames), t.pid, t.camid) for t in tracklets]


# ---------------------------------------------------------------------------------------------------------------
# MARS


def test_mars_counts_junk_order_and_gallery_conventions(tmp_path, caplog):
    expected = write_mars(tmp_path)
    with caplog.at_level(logging.INFO, logger="datamodules.tracklets"):
        splits = read_mars(tmp_path)
    assert "skipped 3 junk tracklets" in caplog.text
    assert [(t.pid, t.camid) for t in splits.train] == [(1, 1), (1, 2), (2, 1), (3, 3)]
    assert [t.frames for t in splits.train] == expected["train"][:4]
    assert [(t.pid, t.camid) for t in splits.query] == [(4, 1), (5, 1), (6, 2)]
    assert [(t.pid, t.camid) for t in splits.gallery] == [(4, 2), (5, 3), (5, 1), (6, 2)]
    assert splits.query[0].frames == expected["test"][0]
    assert all(t.pid != -1 for t in splits.train + splits.query + splits.gallery)
    frame = Path(splits.query[0].frames[1])
    assert frame.is_absolute() and frame.parent.name == "0004" and frame.parent.parent.name == "bbox_test"
    with_query = read_mars(tmp_path, gallery_includes_query=True)
    assert [t.frames for t in with_query.gallery] == expected["test"][:7]
    assert read_tracklets(tmp_path, "toy").query == splits.query


def test_mars_row_past_the_name_list(tmp_path):
    write_mars(tmp_path)
    table = scipy.io.loadmat(tmp_path / "info" / "tracks_test_info.mat")["track_test_info"]
    table[1, 1] = 999
    scipy.io.savemat(tmp_path / "info" / "tracks_test_info.mat", {"track_test_info": table})
    with pytest.raises(DataError, match=r"tracks_test_info\.mat row 2.*of 21 names"):
        read_mars(tmp_path)


def test_mars_mat_with_wrong_key(tmp_path):
    write_mars(tmp_path)
    scipy.io.savemat(tmp_path / "info" / "tracks_train_info.mat", {"wrong_key": np.zeros((1, 4))})
    with pytest.raises(DataError, match=r"tracks_train_info\.mat has no key 'track_train_info'.*wrong_key"):
        read_mars(tmp_path)


def test_mars_missing_file_and_empty_folder(tmp_path):
    write_mars(tmp_path)
    (tmp_path / "info" / "query_IDX.mat").unlink()
    with pytest.raises(DataError, match=r"query_IDX\.mat is missing.*MARS layout"):
        read_mars(tmp_path)
    write_mars(tmp_path)
    for f in (tmp_path / "bbox_train" / "0002").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"bbox_train/0002 is empty"):
        read_mars(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# DukeMTMC-VideoReID


def test_duke_both_name_formats(tmp_path):
    write_duke(tmp_path / "DukeMTMC-VideoReID")
    splits = read_duke(tmp_path)  # the parent folder is accepted too
    assert [(t.pid, t.camid, len(t.frames)) for t in splits.train] == [(1, 1, 3), (2, 6, 2), (2, 1, 1)]
    assert [(t.pid, t.camid) for t in splits.query] == [(3, 2)]
    assert [(t.pid, t.camid) for t in splits.gallery] == [(3, 3), (4, 1)]
    # frames by the F number, across both formats
    assert [Path(p).name[:13] for p in splits.train[0].frames] == ["0001_C1_F0001", "0001C1F0002X3", "0001_C1_F0003"]
    assert read_tracklets(tmp_path / "DukeMTMC-VideoReID", "duke", gallery_includes_query=True).gallery[0].pid == 3


def test_duke_empty_tracklet_folder(tmp_path):
    write_duke(tmp_path)
    empty = tmp_path / "gallery" / "0004" / "0002"
    empty.mkdir()
    with pytest.raises(DataError, match=str(empty)):
        read_duke(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# LS-VID


def test_lsvid_both_layouts_give_the_same_splits(tmp_path):
    a, b = tmp_path / "loaders", tmp_path / "zip"
    write_lsvid(a, "loaders")
    write_lsvid(b, "zip")
    sa, sb = read_lsvid(a), read_tracklets(b, "lsvid")
    for name in ("train", "query", "gallery"):
        assert relative(getattr(sa, name), a) == relative(getattr(sb, name), b)
    assert [(t.pid, t.camid) for t in sa.train] == [(1, 2), (1, 5), (2, 3)]
    assert [(t.pid, t.camid) for t in sa.query] == [(7, 1), (8, 4)]  # rows 1 and 3 of the HDF5 'query'
    assert [(t.pid, t.camid) for t in sa.gallery] == [(7, 2), (8, 5)]
    assert [Path(p).name for p in sa.train[0].frames] == ["0001_9_02_0001.jpg", "0001_10_02_0001.jpg",
                                                          "0001_11_02_0001.jpg"]  # fmt: skip
    assert len(read_lsvid(a, gallery_includes_query=True).gallery) == 4


def test_lsvid_info_without_query_key(tmp_path):
    write_lsvid(tmp_path, "zip", query_key="queries")
    with pytest.raises(DataError, match=r"info_test\.mat has no key 'query'.*queries"):
        read_lsvid(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def test_restricted_random_indices():
    for n, T in [(20, 8), (8, 8), (101, 4)]:
        chunks = np.array_split(np.arange(n), T)
        middle = restricted_random_indices(n, T)
        assert middle == [int(c[len(c) // 2]) for c in chunks] == restricted_random_indices(n, T)
        for seed in range(5):
            picks = restricted_random_indices(n, T, np.random.default_rng(seed))
            assert len(picks) == T and picks == sorted(picks)
            assert all(p in c for p, c in zip(picks, chunks, strict=True))
    short = restricted_random_indices(3, 8, np.random.default_rng(0))
    assert len(short) == 8 and short == sorted(short) and set(short) == {0, 1, 2}
    assert restricted_random_indices(1, 4) == [0, 0, 0, 0]


def test_dense_clips():
    clips = dense_clips(10, 4, max_clips=8)
    assert clips == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert sorted({i for c in clips for i in c}) == list(range(10))
    limited = dense_clips(100, 4, max_clips=3)
    assert limited == [[0, 1, 2, 3], [48, 49, 50, 51], [96, 97, 98, 99]]
    assert dense_clips(2, 4, 8) == [[0, 1, 1, 1]]


def test_pk_sampler_batches_ranks_and_epochs():
    labels = [pid for pid in range(6) for _ in range(5)] + [6]  # identity 6 has one tracklet (drawn with replacement)
    P, K = 3, 2
    sampler = PKSampler(labels, batch_size=P * K, num_instances=K, seed=1, num_replicas=1, rank=0)
    flat = list(sampler)
    assert len(flat) == len(sampler) and len(flat) % (P * K) == 0
    batches = [flat[i : i + P * K] for i in range(0, len(flat), P * K)]
    for batch in batches:
        ids = [labels[i] for i in batch]
        assert len(set(ids)) == P
        assert all(len(set(ids[p * K : (p + 1) * K])) == 1 for p in range(P))  # identity-major P x K block
    ranks = [PKSampler(labels, P * K, K, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])
    whole = ranks[0].batches()
    assert per_rank[0] == [i for b in whole[0::2] for i in b] and per_rank[1] == [i for b in whole[1::2] for i in b]
    assert per_rank[0] != per_rank[1]
    again = PKSampler(labels, P * K, K, seed=1, num_replicas=1, rank=0)
    assert list(again) == flat
    again.set_epoch(1)
    assert list(again) != flat
    with pytest.raises(DataError, match="identities"):
        PKSampler([0, 0, 1, 1], batch_size=6, num_instances=2)


# ---------------------------------------------------------------------------------------------------------------
# Clip transform


def test_clip_transform_same_augmentation_for_every_frame():
    height, width, T = 32, 16, 4
    frames = []
    for t in range(T):  # red on the left, blue on the right, a different shade in every frame
        image = np.zeros((height, width, 3), np.uint8)
        image[:, : width // 2, 0] = 255 - 30 * t
        image[:, width // 2 :, 2] = 255 - 30 * t
        frames.append(Image.fromarray(image))
    full = ClipTransform(height, width, train=True)  # flip, pad + crop, erasing
    for seed in range(12):
        torch.manual_seed(seed)
        clip = full([frames[0]] * T)
        assert clip.shape == (T, 3, height, width)
        assert all(torch.equal(clip[0], clip[t]) for t in range(1, T))  # one flip / crop / erasing per clip
    flip_only = ClipTransform(height, width, train=True, pad=0, erase_p=0.0)
    flipped = []
    for seed in range(12):
        torch.manual_seed(seed)
        clip = flip_only(frames)
        red_left = clip[:, 0, :, : width // 2].mean((1, 2)) > clip[:, 0, :, width // 2 :].mean((1, 2))
        assert red_left.all() or (~red_left).all()
        flipped.append(not bool(red_left[0]))
    assert any(flipped) and not all(flipped)
    erasing = ClipTransform(height, width, train=True, erase_p=1.0, flip_p=0.0, pad=0)
    torch.manual_seed(0)
    erased = erasing(frames)
    box = (erased == 0).all(1)  # the erased box is 0 in every channel (nothing else is), at the same place
    assert box.any() and all(torch.equal(box[0], box[t]) for t in range(1, T))


# ---------------------------------------------------------------------------------------------------------------
# Single-camera filter, evaluation batches, DataModule


def test_single_camera_queries_are_counted_and_left_out():
    t = lambda pid, cam: Tracklet(("x.jpg",), pid, cam)  # noqa: E731
    splits = TrackletSplits([t(0, 1)], [t(1, 1), t(2, 1), t(3, 2)], [t(1, 2), t(2, 1), t(3, 1), t(3, 2)])
    kept, count = filter_single_camera_queries(splits)
    assert count == 1 and [q.pid for q in kept.query] == [1, 3]
    assert kept.gallery == splits.gallery


def test_eval_dataset_and_collate(tmp_path):
    write_mars(tmp_path)
    splits = read_mars(tmp_path)
    transform = ClipTransform(16, 8, train=False)
    dense = TrackletEvalDataset(splits.query, splits.gallery, T=2, test_sampling="dense", max_clips=8,
                                transform=transform)  # fmt: skip
    items = [dense[0], dense[3]]
    assert items[0]["frames"].shape == (2, 2, 3, 16, 8) and items[0]["is_query"] and not items[1]["is_query"]
    batch = collate_eval(items)
    assert batch["frames"].shape == (3, 2, 3, 16, 8)
    assert batch["clip_owner"].tolist() == [0, 0, 1] and batch["index"].tolist() == [0, 3]
    assert batch["pid"].tolist() == [4, 4] and batch["is_query"].tolist() == [True, False]
    rrs = TrackletEvalDataset(splits.query, splits.gallery, T=4, test_sampling="rrs", transform=transform)
    assert rrs[1]["frames"].shape == (1, 4, 3, 16, 8)


def datamodule(root: Path, **kw) -> TrackletDataModule:
    options = dict(height=16, width=8, seq_len=4, num_instances=2, batch_size=4, eval_batch_size=3, num_workers=0,
                   pin_memory=False, persistent_workers=False)  # fmt: skip
    return TrackletDataModule(str(root), **{**options, **kw})


def test_datamodule_batches_and_check(tmp_path, caplog):
    write_mars(tmp_path)
    dm = datamodule(tmp_path, dataset="mars", test_sampling="dense", max_clips=2)
    with caplog.at_level(logging.INFO, logger="datamodules.tracklets"):
        dm.setup("fit")
    assert dm.num_classes == 3 and dm.num_query == 2 and dm.single_camera_queries == 1
    assert "1 of 3 queries" in caplog.text
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (4, 4, 3, 16, 8)
    pids = batch["pid"].tolist()
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2] and max(pids) < 3
    evaluated = list(dm.val_dataloader())
    assert sum(len(b["index"]) for b in evaluated) == 6
    assert evaluated[0]["is_query"].tolist() == [True, True, False]
    summary, problems = dm.check_dataset()
    assert problems == []
    assert summary["train"] == {"ids": 3, "cameras": 3, "tracklets": 4, "frames": 12}
    assert summary["query"]["single_camera_left_out"] == 1
    assert "gallery: ids 3" in dm.describe()


def test_toy_prepare_data_writes_the_mars_layout(tmp_path, monkeypatch):
    calls = []

    def write_synthetic_tracklets(root, train_ids, test_ids, tracklets_per_id, height, width, domain, seed):
        calls.append(dict(train_ids=train_ids, test_ids=test_ids, tracklets_per_id=tracklets_per_id, height=height,
                          width=width, domain=domain, seed=seed))  # fmt: skip
        write_mars(Path(root))

    fake = types.ModuleType("datamodules.toy.pedestrians")
    fake.write_synthetic_tracklets = write_synthetic_tracklets
    monkeypatch.setitem(sys.modules, "datamodules.toy.pedestrians", fake)
    dm = datamodule(tmp_path / "toy", dataset="toy", toy_train_ids=3, toy_test_ids=3, toy_domain="b", seed=5)
    dm.prepare_data()
    dm.prepare_data()  # written once
    assert calls == [dict(train_ids=3, test_ids=3, tracklets_per_id=4, height=16, width=8, domain="b", seed=5)]
    dm.setup("test")
    assert dm.num_query == 2 and len(dm.eval_dataset) == 6


def test_cross_domain_evaluation_reads_query_and_gallery_from_the_test_root(tmp_path):
    dm = TrackletDataModule(root=str(tmp_path / "a"), dataset="toy", height=32, width=16, seq_len=2, batch_size=4,
                            num_instances=2, num_workers=0, pin_memory=False, persistent_workers=False,
                            toy_train_ids=4, toy_test_ids=3, toy_tracklets_per_id=2, test_root=str(tmp_path / "b"),
                            test_dataset="toy", toy_test_domain="b")  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.num_query == 3
    train_frames = {f for t in dm.train_dataset.tracklets for f in t.frames}
    eval_frames = {f for t in dm.eval_dataset.tracklets for f in t.frames}
    assert all(f.startswith(str(tmp_path / "a")) for f in train_frames)
    assert all(f.startswith(str(tmp_path / "b")) for f in eval_frames)
    marker = json.loads((tmp_path / "b" / ".toy-complete").read_text())
    assert marker["options"]["domain"] == "b"
