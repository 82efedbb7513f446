"""Video person re-identification data (STT, arXiv 2103.16469): tracklets of MARS, DukeMTMC-VideoReID and LS-VID,
restricted random / dense frame sampling, an identity-balanced P x K sampler and clip-consistent augmentation.

Layouts (:func:`read_tracklets`)
--------------------------------

* **MARS** (``dataset: mars``, also what ``dataset: toy`` writes; the layout torchreid reads)::

      <root>/bbox_train/<pid4>/<name>.jpg         e.g. bbox_train/0001/0001C1T0001F001.jpg
      <root>/bbox_test/<pid4>/<name>.jpg          junk identity: bbox_test/00-1/00-1C1T0001F001.jpg
      <root>/info/train_name.txt                  one image name per line
      <root>/info/test_name.txt
      <root>/info/tracks_train_info.mat           key track_train_info: N x 4 (start, end, pid, camid)
      <root>/info/tracks_test_info.mat            key track_test_info:  N x 4
      <root>/info/query_IDX.mat                   key query_IDX: 1-based rows of the test table that are queries

  Row ``(start, end, pid, camid)`` is the tracklet ``names[start - 1 : end]`` (1-based, inclusive), read from
  ``bbox_<split>/<name[:4]>/<name>``. Characters 0-3 of a name are the identity, character 5 the camera. Tracklets
  of the junk identity (pid -1) are left out of every split and counted (logged at INFO). The gallery is the test
  rows that are not queries, or, with ``gallery_includes_query``, every test row (the other published convention;
  the evaluation's same-identity same-camera filter removes each query's match with itself).

* **DukeMTMC-VideoReID** (``dataset: duke``)::

      <root>/{train,query,gallery}/<pid4>/<tracklet4>/<frame>.jpg

  ``root`` may also be the folder that contains ``DukeMTMC-VideoReID/``. Frame names come in two formats,
  ``0001C6F0099X30823.jpg`` and ``0001_C6_F0099_X30823.jpg`` (identity, ``C`` camera, ``F`` frame number); frames
  are ordered by the frame number. The gallery folder holds no queries; ``gallery_includes_query`` prepends them.

* **LS-VID** (``dataset: lsvid``), two layouts, detected automatically:

  - the one the public loaders read: ``<root>/info/list_sequence/list_seq_{train,test}.txt`` and
    ``<root>/info/data/info_test.mat``;
  - the distributed archive's: ``<root>/list_sequence/list_seq_{train,test}.txt`` and
    ``<root>/test/data/info_test.mat``;

  both with the frames under ``<root>/tracklet_train/``, ``<root>/tracklet_test/`` (and ``tracklet_val/``). A list
  line is ``<path prefix relative to root> <pid>``; the tracklet's frames are the images ``<root>/<prefix>*``.
  Frame names have four ``_``-separated fields: the 2nd is the frame number (the order), the 3rd the camera.
  ``info_test.mat`` is MATLAB v7.3 (HDF5); its ``query`` holds the 1-based rows of the test list that are queries,
  every other test row is gallery (or every row, with ``gallery_includes_query``).

Identities and cameras keep the dataset's values in :class:`Tracklet`; :class:`TrackletTrainDataset` relabels the
training identities to ``0 .. N-1``. Queries whose identity has no gallery tracklet from another camera cannot be
scored; :func:`filter_single_camera_queries` keeps them out and counts them.

Batches
-------

* training: ``{"frames" [B, T, 3, H, W], "pid" [B] (label 0..N-1), "camid" [B], "skipped"}``; ``B = P x K`` laid
  out identity-major (``K`` tracklets of the 1st identity, then of the 2nd ...), see :class:`PKSampler`;
* evaluation: queries then gallery tracklets, each cut into ``C`` clips (``C = 1`` for ``rrs``); see
  :func:`collate_eval`. Under DDP a ``DistributedSampler(shuffle=False)`` shards them and pads the last rank by
  repeating a few tracklets; the metric keeps one copy per ``index``.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from datamodules.base import SuiteDataModule
from datamodules.images import IMAGE_EXTENSIONS, load_rgb, log_skipped
from datamodules.toy import ensure_written
from suite_base.errors import ConfigError, CorruptFileError, DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LAYOUTS = {
    "mars": "<root>/bbox_{train,test}/<pid4>/<name>.jpg and <root>/info/{train_name.txt, test_name.txt, "
    "tracks_train_info.mat, tracks_test_info.mat, query_IDX.mat}",
    "duke": "<root>/{train,query,gallery}/<pid4>/<tracklet4>/<pid4>C<cam>F<frame>X<n>.jpg (or with '_' between)",
    "lsvid": "<root>/info/list_sequence/list_seq_{train,test}.txt + <root>/info/data/info_test.mat, or "
    "<root>/list_sequence/list_seq_{train,test}.txt + <root>/test/data/info_test.mat; frames under "
    "<root>/tracklet_{train,test}/",
}
DATASETS = ("mars", "duke", "lsvid", "toy")
NAMES = {"mars": "MARS", "duke": "DukeMTMC-VideoReID", "lsvid": "LS-VID", "toy": "MARS"}


# ---------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Tracklet:
    """One tracklet: its frames in temporal order, identity and camera as in the dataset.

    Args:
        frames: absolute paths of the frame images, in temporal order.
        pid: identity as in the dataset (-1: junk / distractor).
        camid: camera id as in the dataset (1-based in MARS).
    """

    frames: tuple[str, ...]
    pid: int
    camid: int


@dataclass
class TrackletSplits:
    """The three splits of a video re-ID dataset."""

    train: list[Tracklet]
    query: list[Tracklet]
    gallery: list[Tracklet]


def split_summary(tracklets: Sequence[Tracklet]) -> dict[str, int]:
    """``{"ids", "cameras", "tracklets", "frames"}`` of a list of tracklets."""
    return {
        "ids": len({t.pid for t in tracklets}),
        "cameras": len({t.camid for t in tracklets}),
        "tracklets": len(tracklets),
        "frames": sum(len(t.frames) for t in tracklets),
    }


# ---------------------------------------------------------------------------------------------------------------
# Small readers


def require(path: Path, what: str, layout: str) -> Path:
    """``path`` if it exists, else a DataError naming it and the expected layout."""
    if not path.exists():
        raise DataError(f"{path} is missing ({what}). Expected {NAMES[layout]} layout: {LAYOUTS[layout]}")
    return path


def read_name_list(path: Path) -> list[str]:
    """Non-empty lines of a name list, stripped."""
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DataError(f"{path} is empty; it should list one image name per line")
    return names


def read_mat_array(path: Path, key: str, what: str) -> np.ndarray:
    """Array ``key`` of a MATLAB file: v4-v7 through ``scipy.io.loadmat``, v7.3 (HDF5) through h5py (transposed
    back to MATLAB's row/column order). Errors name the file, the key expected and the keys found."""
    import h5py
    import scipy.io

    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                found = sorted(f.keys())
                if key in f and isinstance(f[key], h5py.Dataset):
                    return np.asarray(f[key][()]).T
        else:
            data = scipy.io.loadmat(str(path))
            found = sorted(k for k in data if not k.startswith("__"))
            if key in data:
                return np.asarray(data[key])
    # scipy raises NotImplementedError for MATLAB formats it cannot read (v7.3 files h5py does not recognise)
    except (OSError, ValueError, NotImplementedError, TypeError) as err:
        raise CorruptFileError(f"{path}: cannot read it as a MATLAB .mat file ({err}); replace the file") from err
    raise DataError(f"{path} has no key '{key}' ({what}); keys found: {found}. Replace it with the dataset's file")


def image_names(folder: Path) -> list[str]:
    """Sorted image file names in ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def drop_junk(tracklets: list[Tracklet]) -> tuple[list[Tracklet], int]:
    kept = [t for t in tracklets if t.pid != -1]
    return kept, len(tracklets) - len(kept)


# ---------------------------------------------------------------------------------------------------------------
# MARS


def mars_pid(prefix: str) -> int | None:
    """The identity a MARS name prefix (its first 4 characters) encodes: ``0001`` -> 1, ``00-1`` -> -1."""
    if prefix == "00-1":
        return -1
    return int(prefix) if prefix.isdigit() else None


def mars_tracklets(root: Path, split: str, names: list[str], table: np.ndarray, table_file: Path,
                   names_file: Path) -> list[Tracklet]:  # fmt: skip
    """The tracklets of one MARS track table, every row checked against the name list and the image folders."""
    if table.ndim != 2 or table.shape[1] < 4:
        raise DataError(f"{table_file}: the track table must be N x 4 (start, end, pid, camid), got shape "
                        f"{table.shape}")  # fmt: skip
    image_dir = root / f"bbox_{split}"
    folders = {e.name for e in os.scandir(image_dir) if e.is_dir()}
    checked: set[str] = set()
    out = []
    for row_number, row in enumerate(table.astype(np.int64).tolist(), start=1):
        start, end, pid, camid = row[:4]
        if start < 1 or start > end or end > len(names):
            raise DataError(
                f"{table_file} row {row_number}: frames {start}..{end} do not fit the name list {names_file} of "
                f"{len(names)} names (need 1 <= start <= end <= {len(names)}); the table and the list do not match"
            )
        frame_names = names[start - 1 : end]
        prefixes = {n[:4] for n in frame_names}
        if len(prefixes) != 1:
            raise DataError(f"{table_file} row {row_number}: its frames in {names_file} belong to several identities "
                            f"{sorted(prefixes)}; the table and the list do not match")  # fmt: skip
        folder = frame_names[0][:4]
        if mars_pid(folder) not in (None, pid):
            raise DataError(f"{table_file} row {row_number} says pid {pid} but its frames are named {folder}...; "
                            "the table and the name list do not match")  # fmt: skip
        if folder not in folders:
            raise DataError(f"{image_dir / folder} is missing (tracklet in {table_file} row {row_number}). "
                            f"Expected MARS layout: {LAYOUTS['mars']}")  # fmt: skip
        if folder not in checked:
            with os.scandir(image_dir / folder) as entries:
                empty = not any(entries)
            if empty:
                raise DataError(f"tracklet folder {image_dir / folder} is empty; restore its frames or remove it")
            checked.add(folder)
        frames = tuple(str(image_dir / folder / n) for n in frame_names)
        for frame in (frames[0], frames[-1]):
            if not os.path.isfile(frame):
                raise DataError(f"{frame} does not exist (frame of {table_file} row {row_number}, from "
                                f"{names_file}); restore it or fix the name list")  # fmt: skip
        out.append(Tracklet(frames, int(pid), int(camid)))
    return out


def read_mars(root: str | os.PathLike, gallery_includes_query: bool = False) -> TrackletSplits:
    """MARS in torchreid's layout (module docstring). Junk tracklets (pid -1) are dropped from every split and
    counted; ``gallery_includes_query`` keeps the queries in the gallery too."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"MARS root {root} does not exist. Expected MARS layout: {LAYOUTS['mars']}")
    info = require(root / "info", "the MARS metadata folder", "mars")
    require(root / "bbox_train", "the training frames", "mars")
    require(root / "bbox_test", "the test frames", "mars")
    files = {
        name: require(info / name, what, "mars")
        for name, what in [
            ("train_name.txt", "training image names"),
            ("test_name.txt", "test image names"),
            ("tracks_train_info.mat", "training track table"),
            ("tracks_test_info.mat", "test track table"),
            ("query_IDX.mat", "query rows of the test table"),
        ]
    }
    train_names = read_name_list(files["train_name.txt"])
    test_names = read_name_list(files["test_name.txt"])
    train_table = read_mat_array(files["tracks_train_info.mat"], "track_train_info", "the training track table")
    test_table = read_mat_array(files["tracks_test_info.mat"], "track_test_info", "the test track table")
    query_idx = read_mat_array(files["query_IDX.mat"], "query_IDX", "the 1-based query rows").ravel()
    train_all = mars_tracklets(root, "train", train_names, train_table, files["tracks_train_info.mat"],
                               files["train_name.txt"])  # fmt: skip
    test_all = mars_tracklets(root, "test", test_names, test_table, files["tracks_test_info.mat"],
                              files["test_name.txt"])  # fmt: skip
    query_rows = query_rows_from(query_idx, len(test_all), files["query_IDX.mat"])
    train, junk_train = drop_junk(train_all)
    query = [test_all[i] for i in query_rows if test_all[i].pid != -1]
    is_query = set(query_rows)
    gallery = [t for i, t in enumerate(test_all) if (gallery_includes_query or i not in is_query) and t.pid != -1]
    junk = junk_train + sum(t.pid == -1 for t in test_all)
    log.info("MARS %s: skipped %d junk tracklets (pid -1)", root, junk)
    return TrackletSplits(train, query, gallery)


def query_rows_from(values: np.ndarray, num_rows: int, path: Path) -> list[int]:
    """0-based, de-duplicated query rows (in file order) from 1-based indices, checked against the table size."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise DataError(f"{path} lists no query rows")
    bad = values[(values != np.round(values)) | (values < 1) | (values > num_rows)]
    if bad.size:
        raise DataError(f"{path}: query index {bad[0]:g} is not a row of the {num_rows}-row test table (1-based); "
                        "the query file does not belong to this test table")  # fmt: skip
    return list(dict.fromkeys(int(v) - 1 for v in values))


# ---------------------------------------------------------------------------------------------------------------
# DukeMTMC-VideoReID

DUKE_FRAME = re.compile(r"^(?P<pid>-?\d+)_?C(?P<cam>\d+)_?F(?P<frame>\d+)")


def parse_duke_frame(name: str) -> tuple[int, int, int] | None:
    """``(pid, camera, frame number)`` of a DukeMTMC-VideoReID frame name in either format; None if it is not one."""
    match = DUKE_FRAME.match(name)
    if match is None:
        return None
    return int(match["pid"]), int(match["cam"]), int(match["frame"])


def read_duke(root: str | os.PathLike) -> TrackletSplits:
    """DukeMTMC-VideoReID (module docstring); ``root`` may be the folder holding ``DukeMTMC-VideoReID/``."""
    root = Path(root).absolute()
    if not (root / "train").is_dir() and (root / "DukeMTMC-VideoReID").is_dir():
        root = root / "DukeMTMC-VideoReID"
    if not root.is_dir():
        raise DataError(f"DukeMTMC-VideoReID root {root} does not exist. Expected layout: {LAYOUTS['duke']}")
    splits = {}
    for split in ("train", "query", "gallery"):
        split_dir = require(root / split, f"the {split} split", "duke")
        tracklets = []
        for pid_dir in sorted(e.path for e in os.scandir(split_dir) if e.is_dir()):
            for track_dir in sorted(e.path for e in os.scandir(pid_dir) if e.is_dir()):
                tracklets.append(duke_tracklet(Path(track_dir)))
        if not tracklets:
            raise DataError(f"{split_dir} holds no tracklet folders. Expected layout: {LAYOUTS['duke']}")
        splits[split] = tracklets
    return TrackletSplits(splits["train"], splits["query"], splits["gallery"])


def duke_tracklet(folder: Path) -> Tracklet:
    names = image_names(folder)
    if not names:
        raise DataError(f"tracklet folder {folder} is empty (no images); restore its frames or remove the folder")
    parsed = []
    for name in names:
        fields = parse_duke_frame(name)
        if fields is None:
            raise DataError(f"{folder / name}: not a DukeMTMC-VideoReID frame name (expected 0001C6F0099X30823.jpg "
                            "or 0001_C6_F0099_X30823.jpg)")  # fmt: skip
        parsed.append((fields[2], name, fields[0], fields[1]))
    parsed.sort()
    identities = {(pid, cam) for _, _, pid, cam in parsed}
    if len(identities) != 1:
        raise DataError(f"tracklet folder {folder} mixes identities/cameras {sorted(identities)}; one tracklet "
                        "holds one person seen by one camera")  # fmt: skip
    pid, cam = identities.pop()
    if folder.parent.name.lstrip("-").isdigit() and int(folder.parent.name) != pid:
        raise DataError(f"tracklet folder {folder}: its frames are named for identity {pid}, not {folder.parent.name}")
    return Tracklet(tuple(str(folder / name) for _, name, _, _ in parsed), pid, cam)


# ---------------------------------------------------------------------------------------------------------------
# LS-VID


def lsvid_files(root: Path) -> tuple[Path, Path, Path]:
    """``(train list, test list, info_test.mat)`` of whichever LS-VID layout ``root`` holds."""
    for lists, info in ((root / "info" / "list_sequence", root / "info" / "data"),
                        (root / "list_sequence", root / "test" / "data")):  # fmt: skip
        if (lists / "list_seq_train.txt").is_file():
            train, test = lists / "list_seq_train.txt", lists / "list_seq_test.txt"
            return (
                train,
                require(test, "the test tracklet list", "lsvid"),
                require(info / "info_test.mat", "the query rows of the test list", "lsvid"),
            )
    raise DataError(f"{root} holds neither info/list_sequence/list_seq_train.txt nor list_sequence/"
                    f"list_seq_train.txt. Expected LS-VID layout: {LAYOUTS['lsvid']}")  # fmt: skip


class FolderIndex:
    """Sorted image names per folder, listed once (LS-VID tracklets are prefixes of names in shared folders)."""

    def __init__(self) -> None:
        self.names: dict[Path, list[str]] = {}

    def starting_with(self, prefix: Path) -> list[str]:
        folder = prefix.parent
        if folder not in self.names:
            self.names[folder] = image_names(folder) if folder.is_dir() else []
        names = self.names[folder]
        start = bisect.bisect_left(names, prefix.name)
        stop = start
        while stop < len(names) and names[stop].startswith(prefix.name):
            stop += 1
        return names[start:stop]


def read_lsvid_list(root: Path, path: Path, index: FolderIndex) -> list[Tracklet]:
    out = []
    with open(path) as f:
        lines = [(n, line.split()) for n, line in enumerate(f, start=1) if line.strip()]
    for line_number, fields in lines:
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DataError(f"{path} line {line_number}: expected '<tracklet path prefix> <pid>', got "
                            f"{' '.join(fields)!r}")  # fmt: skip
        prefix = root / fields[0]
        names = index.starting_with(prefix)
        if not names:
            raise DataError(f"{path} line {line_number}: no frames {prefix}* (empty or missing tracklet); restore "
                            "them or remove the line")  # fmt: skip
        frames = []
        for name in names:
            parts = Path(name).stem.split("_")
            if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
                raise DataError(f"{prefix.parent / name}: not an LS-VID frame name (four '_'-separated fields, the "
                                "2nd the frame number, the 3rd the camera)")  # fmt: skip
            frames.append((int(parts[1]), name, int(parts[2])))
        frames.sort()
        cameras = {cam for _, _, cam in frames}
        if len(cameras) != 1:
            raise DataError(f"{path} line {line_number}: the frames {prefix}* come from cameras {sorted(cameras)}; "
                            "a tracklet comes from one camera (is the prefix too short?)")  # fmt: skip
        out.append(Tracklet(tuple(str(prefix.parent / name) for _, name, _ in frames), int(fields[1]), cameras.pop()))
    if not out:
        raise DataError(f"{path} lists no tracklets")
    return out


def read_lsvid(root: str | os.PathLike, gallery_includes_query: bool = False) -> TrackletSplits:
    """LS-VID in either layout (module docstring); queries from ``info_test.mat`` (HDF5, key ``query``)."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"LS-VID root {root} does not exist. Expected layout: {LAYOUTS['lsvid']}")
    train_list, test_list, info = lsvid_files(root)
    index = FolderIndex()
    train = read_lsvid_list(root, train_list, index)
    test = read_lsvid_list(root, test_list, index)
    rows = query_rows_from(read_mat_array(info, "query", "the 1-based query rows of the test list"), len(test), info)
    is_query = set(rows)
    train, junk_train = drop_junk(train)
    query = [test[i] for i in rows if test[i].pid != -1]
    gallery = [t for i, t in enumerate(test) if (gallery_includes_query or i not in is_query) and t.pid != -1]
    junk = junk_train + sum(t.pid == -1 for t in test)
    if junk:
        log.info("LS-VID %s: skipped %d junk tracklets (pid -1)", root, junk)
    return TrackletSplits(train, query, gallery)


def read_tracklets(root: str | os.PathLike, dataset: str, gallery_includes_query: bool = False) -> TrackletSplits:
    """The splits of ``dataset`` (``mars``, ``duke``, ``lsvid``, or ``toy``: the MARS layout) under ``root``.

    ``gallery_includes_query`` adds the queries to the gallery (for Duke, whose gallery folder holds no queries,
    the queries are prepended)."""
    if dataset in ("mars", "toy"):
        return read_mars(root, gallery_includes_query)
    if dataset == "lsvid":
        return read_lsvid(root, gallery_includes_query)
    if dataset == "duke":
        splits = read_duke(root)
        if gallery_includes_query:
            splits.gallery = splits.query + splits.gallery
        return splits
    raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


def filter_single_camera_queries(splits: TrackletSplits) -> tuple[TrackletSplits, int]:
    """Leave out the queries whose identity has no gallery tracklet from another camera (they cannot be scored);
    returns the new splits and how many queries were left out."""
    cameras: dict[int, set[int]] = defaultdict(set)
    for t in splits.gallery:
        cameras[t.pid].add(t.camid)
    query = [q for q in splits.query if cameras.get(q.pid, set()) - {q.camid}]
    return TrackletSplits(splits.train, query, splits.gallery), len(splits.query) - len(query)


# ---------------------------------------------------------------------------------------------------------------
# Frame sampling


def restricted_random_indices(n_frames: int, T: int, rng: np.random.Generator | None = None) -> list[int]:
    """Restricted random sampling: ``range(n_frames)`` cut into ``T`` near-equal consecutive chunks
    (``np.array_split``), one frame from each: random with ``rng`` (training), the middle of the chunk without
    (evaluation). A tracklet shorter than ``T`` repeats frames, so the result is always ``T`` sorted indices."""
    if n_frames < 1 or T < 1:
        raise DataError(f"restricted random sampling needs n_frames >= 1 and T >= 1, got {n_frames} and {T}")
    if n_frames < T:
        # every frame at least once, the extra slots spread evenly: floor(i * n / T)
        return [i * n_frames // T for i in range(T)]
    out = []
    for chunk in np.array_split(np.arange(n_frames), T):
        k = int(rng.integers(len(chunk))) if rng is not None else len(chunk) // 2
        out.append(int(chunk[k]))
    return out


def dense_clips(n_frames: int, T: int, max_clips: int | None = None) -> list[list[int]]:
    """Consecutive clips of ``T`` frames covering the tracklet (the last one padded with its final frame); at most
    ``max_clips`` of them, evenly spaced over the tracklet (None: all)."""
    if n_frames < 1 or T < 1:
        raise DataError(f"dense sampling needs n_frames >= 1 and T >= 1, got {n_frames} and {T}")
    clips = [[min(s + t, n_frames - 1) for t in range(T)] for s in range(0, n_frames, T)]
    if max_clips is not None and len(clips) > max_clips:
        keep = np.linspace(0, len(clips) - 1, max_clips).round().astype(int)
        clips = [clips[i] for i in keep]
    return clips


# ---------------------------------------------------------------------------------------------------------------
# Identity-balanced sampler


class PKSampler(Sampler[int]):
    """``P`` identities x ``K`` tracklets per batch (``batch_size = P * K``), identity-major: batch positions
    ``p * K .. p * K + K - 1`` hold identity ``p``'s tracklets.

    Per epoch, each identity's tracklets are shuffled and cut into groups of ``K`` (an identity with fewer than
    ``K`` tracklets gives one group drawn with replacement; leftovers smaller than ``K`` wait for another epoch);
    each batch takes one group from each of ``P`` distinct identities that still have groups. When fewer than ``P``
    identities have groups left, the used-up identities are re-shuffled. An epoch has
    ``max(1, groups // P // W)`` batches per rank (``W`` ranks). The order depends only on ``(seed, epoch)``
    (:meth:`set_epoch`); rank ``r`` takes batches ``r, r + W, ...``, so ranks get disjoint batches of equal count.
    Use it with ``DataLoader(batch_size=P * K, drop_last=True)``.

    Args:
        labels: identity of every tracklet (any integers).
        batch_size: ``P * K`` (32 = 8 identities x 4 tracklets in STT).
        num_instances: ``K`` (4).
        seed: seed of the order.
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed`` when initialised, else 1/0).
    """

    def __init__(self, labels: Sequence[int], batch_size: int = 32, num_instances: int = 4, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:  # fmt: skip
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ConfigError(f"data.batch_size ({batch_size}) must be a multiple of data.num_instances "
                              f"({num_instances}) >= 1: each batch is P identities x K tracklets")  # fmt: skip
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if ready else 1)
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is not in [0, {num_replicas})")
        labels = np.asarray(labels)
        pids, inverse = np.unique(labels, return_inverse=True)
        self.by_pid = [np.flatnonzero(inverse == i) for i in range(len(pids))]
        self.K, self.P = num_instances, batch_size // num_instances
        if len(pids) < self.P:
            raise DataError(
                f"a batch needs {self.P} identities (batch_size {batch_size} / num_instances {num_instances}) but "
                f"the training split has {len(pids)}; lower data.batch_size"
            )
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        groups = sum(max(1, len(ix) // self.K) for ix in self.by_pid)
        self.batches_per_rank = max(1, groups // self.P // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, rng: np.random.Generator, ix: np.ndarray) -> list[list[int]]:
        ix = rng.choice(ix, self.K, replace=True) if len(ix) < self.K else rng.permutation(ix)
        return [ix[j * self.K : (j + 1) * self.K].tolist() for j in range(len(ix) // self.K)]

    def batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in order (rank ``r`` takes ``r::W``)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        pools = [self._groups(rng, ix) for ix in self.by_pid]
        out: list[list[int]] = []
        while len(out) < self.batches_per_rank * self.num_replicas:
            available = [p for p, pool in enumerate(pools) if pool]
            if len(available) < self.P:
                for p, pool in enumerate(pools):
                    if not pool:
                        pools[p] = self._groups(rng, self.by_pid[p])
                available = list(range(len(pools)))
            chosen = rng.choice(available, self.P, replace=False)
            out.append([i for p in chosen for i in pools[p].pop()])
        return out

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches()[self.rank :: self.num_replicas]:
            yield from batch

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size


# ---------------------------------------------------------------------------------------------------------------
# Clip transform


class ClipTransform:
    """Frames of one clip (PIL images) -> ``[T, 3, H, W]`` tensor, every frame transformed alike.

    Training (STT / torchreid recipe): Resize((H, W)), horizontal flip (p 0.5), zero-pad 10 and random crop (H, W),
    ToTensor, ImageNet normalisation, random erasing (p 0.5; area 2-40 %, aspect 0.3-3.33, filled with 0 = the
    ImageNet mean after normalisation). Each random decision (flip, crop offset, erasing box) is drawn once per clip
    from torch's generator and applied to all frames. Evaluation: Resize, ToTensor, normalisation.

    Args:
        height, width: output frame size (256 x 128).
        train: random augmentation or not.
        flip_p: horizontal flip probability.
        pad: zero padding before the random crop (pixels).
        erase_p: random erasing probability.
        erase_scale: erased area range, as a fraction of the frame.
        erase_ratio: erased box aspect ratio range.
        mean, std: normalisation.
    """

    def __init__(self, height: int = 256, width: int = 128, train: bool = True, flip_p: float = 0.5, pad: int = 10,
                 erase_p: float = 0.5, erase_scale: tuple[float, float] = (0.02, 0.4),
                 erase_ratio: tuple[float, float] = (0.3, 3.33), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:  # fmt: skip
        self.height, self.width, self.train = height, width, train
        self.flip_p, self.pad, self.erase_p = flip_p, pad, erase_p
        self.erase_scale, self.erase_ratio = tuple(erase_scale), tuple(erase_ratio)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def to_tensor(self, frames: Sequence[Image.Image]) -> Tensor:
        size = (self.width, self.height)
        resized = [f if f.size == size else TF.resize(f, [self.height, self.width]) for f in frames]
        return torch.stack([TF.pil_to_tensor(f) for f in resized]).float().div_(255)

    def erase_box(self) -> tuple[int, int, int, int] | None:
        """``(top, left, h, w)`` of the erased box, or None when 10 draws do not fit the frame."""
        area = self.height * self.width
        log_ratio = (math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(*self.erase_scale))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
            h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < h < self.height and 0 < w < self.width:
                top = int(torch.randint(0, self.height - h + 1, ()))
                left = int(torch.randint(0, self.width - w + 1, ()))
                return top, left, h, w
        return None

    def __call__(self, frames: Sequence[Image.Image]) -> Tensor:
        x = self.to_tensor(frames)
        if self.train:
            if float(torch.rand(())) < self.flip_p:
                x = x.flip(-1)
            if self.pad > 0:
                x = F.pad(x, (self.pad,) * 4)
                top = int(torch.randint(0, 2 * self.pad + 1, ()))
                left = int(torch.randint(0, 2 * self.pad + 1, ()))
                x = x[..., top : top + self.height, left : left + self.width]
        x = (x - self.mean) / self.std
        if self.train and float(torch.rand(())) < self.erase_p:
            box = self.erase_box()
            if box is not None:
                top, left, h, w = box
                x[..., top : top + h, left : left + w] = 0
        return x.contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Datasets


def load_frames(frames: Sequence[str], indices: Sequence[int], on_corrupt: str) -> list[Image.Image] | None:
    """The images ``frames[i]`` for ``i`` in ``indices`` (each file decoded once). With ``on_corrupt: skip`` an
    undecodable frame is replaced by the nearest decodable frame of the tracklet; None if none decodes."""
    cache: dict[int, Image.Image | None] = {}

    def get(i: int) -> Image.Image | None:
        if i not in cache:
            try:
                cache[i] = load_rgb(frames[i])
            except CorruptFileError as err:
                if on_corrupt == "raise":
                    raise
                log_skipped(err)
                cache[i] = None
        return cache[i]

    out = []
    for i in indices:
        image = get(i)
        if image is None:
            near = sorted(range(len(frames)), key=lambda j: (abs(j - i), j))
            image = next((im for j in near[1:] if (im := get(j)) is not None), None)
            if image is None:
                return None
        out.append(image)
    return out


class TrackletTrainDataset(Dataset):
    """Training clips: ``{"frames" [T, 3, H, W], "pid" (label 0..N-1), "camid"}``, ``T`` frames by restricted
    random sampling.

    Args:
        tracklets: the training tracklets.
        T: frames per clip (8).
        transform: frames -> ``[T, 3, H, W]`` (:class:`ClipTransform` with ``train=True``).
        seed: mixed into each item's frame choice together with a draw from torch's generator (which the DataLoader
            seeds per worker, and ``seed_everything`` per run), so epochs differ and runs repeat.
        on_corrupt: ``raise`` stops at an undecodable frame; ``skip`` uses a neighbouring frame instead.
    """

    def __init__(self, tracklets: Sequence[Tracklet], T: int = 8, transform: Callable | None = None, seed: int = 0,
                 on_corrupt: str = "raise") -> None:  # fmt: skip
        if not tracklets:
            raise DataError("the training split holds no tracklets")
        self.tracklets, self.T, self.seed, self.on_corrupt = list(tracklets), T, seed, on_corrupt
        self.transform = transform or ClipTransform(train=True)
        self.pids = sorted({t.pid for t in self.tracklets})
        relabel = {pid: label for label, pid in enumerate(self.pids)}
        self.labels = [relabel[t.pid] for t in self.tracklets]

    @property
    def num_classes(self) -> int:
        return len(self.pids)

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, index: int) -> dict | None:
        tracklet = self.tracklets[index]
        rng = np.random.default_rng([self.seed, index, int(torch.randint(0, 2**62, ()))])
        indices = restricted_random_indices(len(tracklet.frames), self.T, rng)
        images = load_frames(tracklet.frames, indices, self.on_corrupt)
        if images is None:
            return None
        return {"frames": self.transform(images), "pid": self.labels[index], "camid": tracklet.camid}


class TrackletEvalDataset(Dataset):
    """Evaluation tracklets, queries first: ``{"frames" [C, T, 3, H, W], "pid", "camid", "is_query", "index"}``.

    Args:
        query, gallery: the evaluation tracklets.
        T: frames per clip.
        test_sampling: ``rrs`` one clip of the middle frame of each of ``T`` chunks (``C = 1``); ``dense``
            consecutive clips covering the tracklet (:func:`dense_clips`).
        max_clips: at most this many dense clips per tracklet, evenly spaced.
        transform: frames -> ``[n, 3, H, W]`` (:class:`ClipTransform` with ``train=False``).
        on_corrupt: ``raise`` or ``skip`` (a neighbouring frame replaces an undecodable one).
    """

    def __init__(self, query: Sequence[Tracklet], gallery: Sequence[Tracklet], T: int = 8,
                 test_sampling: Literal["rrs", "dense"] = "rrs", max_clips: int = 8,
                 transform: Callable | None = None, on_corrupt: str = "raise") -> None:  # fmt: skip
        if test_sampling not in ("rrs", "dense"):
            raise ConfigError(f"data.test_sampling must be 'rrs' or 'dense', got {test_sampling!r}")
        self.tracklets = list(query) + list(gallery)
        self.num_query, self.T, self.test_sampling, self.max_clips = len(query), T, test_sampling, max_clips
        self.transform = transform or ClipTransform(train=False)
        self.on_corrupt = on_corrupt

    def __len__(self) -> int:
        return len(self.tracklets)

    def clips(self, index: int) -> list[list[int]]:
        n = len(self.tracklets[index].frames)
        if self.test_sampling == "rrs":
            return [restricted_random_indices(n, self.T)]
        return dense_clips(n, self.T, self.max_clips)

    def __getitem__(self, index: int) -> dict | None:
        tracklet = self.tracklets[index]
        clips = self.clips(index)
        unique = sorted({i for clip in clips for i in clip})
        images = load_frames(tracklet.frames, unique, self.on_corrupt)
        if images is None:
            return None
        frames = self.transform(images)
        where = {i: k for k, i in enumerate(unique)}
        gather = torch.tensor([[where[i] for i in clip] for clip in clips])
        return {
            "frames": frames[gather],
            "pid": tracklet.pid,
            "camid": tracklet.camid,
            "is_query": index < self.num_query,
            "index": index,
        }


def collate_eval(items: list[dict | None]) -> dict:
    """Evaluation batch of ``B`` tracklets: ``frames [sum C, T, 3, H, W]`` (every tracklet's clips in turn),
    ``clip_owner [sum C]`` (position of each clip's tracklet in the batch), ``pid``, ``camid``, ``is_query``,
    ``index`` ``[B]``, and ``skipped`` (tracklets none of whose frames decoded, left out)."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise DataError(f"no tracklet of an evaluation batch of {len(items)} decoded; check the dataset")
    owner = torch.cat([torch.full((len(item["frames"]),), b, dtype=torch.long) for b, item in enumerate(kept)])
    batch = {
        "frames": torch.cat([item["frames"] for item in kept]),
        "clip_owner": owner,
        "pid": torch.tensor([item["pid"] for item in kept], dtype=torch.long),
        "camid": torch.tensor([item["camid"] for item in kept], dtype=torch.long),
        "is_query": torch.tensor([item["is_query"] for item in kept], dtype=torch.bool),
        "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "skipped": torch.tensor(len(items) - len(kept)),
    }
    return batch


# ---------------------------------------------------------------------------------------------------------------
# The DataModule


class TrackletDataModule(SuiteDataModule):
    """Video re-ID tracklets for STT: P x K training clips and query + gallery evaluation tracklets.

    Training: :class:`PKSampler` batches of ``batch_size = P x K`` clips of ``seq_len`` frames (restricted random
    sampling, clip-consistent augmentation); the configs set ``trainer.use_distributed_sampler: false`` because the
    sampler shards itself. Validation and test serve :class:`TrackletEvalDataset` (queries, then gallery) with
    :func:`collate_eval`. Under DDP they are sharded by ``DistributedSampler(shuffle=False)``, which pads the last
    rank by repeating a few tracklets: the metric keeps one copy per ``index``.

    Queries whose identity has no gallery tracklet from another camera are left out (counted and logged).

    Args:
        root: dataset root (layouts in the module docstring); the toy dataset is written here.
        dataset: ``mars``, ``duke`` or ``lsvid``; ``toy`` writes synthetic pedestrians in the MARS layout.
        height, width: frame size (256 x 128).
        seq_len: frames per clip ``T`` (8).
        pad: zero padding before the training random crop; None: 10 pixels at 256 px height (torchreid's setting),
            scaled with ``height`` (2 at the toy's 64x32).
        num_instances: tracklets per identity in a batch ``K`` (4).
        batch_size: clips per training step per device, ``P x K`` (32: 8 identities x 4).
        test_sampling: ``rrs`` (one clip of chunk middles) or ``dense`` (consecutive clips, averaged).
        max_clips: at most this many dense clips per tracklet (8).
        eval_batch_size: tracklets per evaluation step (16).
        gallery_includes_query: queries also in the gallery (the other published convention).
        num_workers, pin_memory, persistent_workers: DataLoader options.
        on_corrupt: ``raise`` stops at an undecodable frame naming it; ``skip`` uses a neighbouring frame.
        seed: seed of the sampler, the frame choice and the toy data.
        toy_train_ids, toy_test_ids: identities of the toy train and test splits.
        toy_tracklets_per_id: toy tracklets per identity.
        toy_domain: ``a`` or ``b``: two toy domains (appearance styles) for cross-dataset runs.
        test_root: cross-domain evaluation: query and gallery come from this dataset root instead of ``root`` (train
            on one dataset, test on another); None evaluates on ``root``'s own query and gallery.
        test_dataset: the layout of ``test_root`` (``mars``, ``duke``, ``lsvid`` or ``toy``); None: ``dataset``.
        toy_test_domain: the toy domain written at ``test_root`` when ``test_dataset`` is ``toy``.
    """

    def __init__(
        self,
        root: str = "data/MARS",
        dataset: Literal["mars", "duke", "lsvid", "toy"] = "mars",
        height: int = 256,
        width: int = 128,
        seq_len: int = 8,
        pad: int | None = None,
        num_instances: int = 4,
        batch_size: int = 32,
        test_sampling: Literal["rrs", "dense"] = "rrs",
        max_clips: int = 8,
        eval_batch_size: int = 16,
        gallery_includes_query: bool = False,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        on_corrupt: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        toy_train_ids: int = 40,
        toy_test_ids: int = 20,
        toy_tracklets_per_id: int = 4,
        toy_domain: Literal["a", "b"] = "a",
        test_root: str | None = None,
        test_dataset: Literal["mars", "duke", "lsvid", "toy"] | None = None,
        toy_test_domain: Literal["a", "b"] = "b",
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, on_corrupt, seed)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
        if test_sampling not in ("rrs", "dense"):
            raise ConfigError(f"data.test_sampling must be 'rrs' or 'dense', got {test_sampling!r}")
        if on_corrupt not in ("raise", "skip"):
            raise ConfigError(f"data.on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        for key, value in (("toy_domain", toy_domain), ("toy_test_domain", toy_test_domain)):
            if value not in ("a", "b"):
                raise ConfigError(f"data.{key} must be 'a' or 'b', got {value!r}")
        test_dataset = test_dataset or dataset
        if test_dataset not in DATASETS:
            raise ConfigError(f"data.test_dataset must be one of {', '.join(DATASETS)}, got {test_dataset!r}")
        if test_root is not None and test_dataset != "toy" and not Path(test_root).is_dir():
            raise DataError(f"data.test_root '{test_root}' does not exist. Expected {NAMES[test_dataset]} layout: "
                            f"{LAYOUTS[test_dataset]}")  # fmt: skip
        if min(height, width, seq_len, max_clips, eval_batch_size) < 1:
            raise ConfigError(f"data.height, width, seq_len, max_clips and eval_batch_size must be >= 1, got "
                              f"{height}, {width}, {seq_len}, {max_clips}, {eval_batch_size}")  # fmt: skip
        if num_instances < 1 or batch_size % num_instances:
            raise ConfigError(f"data.batch_size ({batch_size}) must be a multiple of data.num_instances "
                              f"({num_instances}): each batch is P identities x K tracklets")  # fmt: skip
        if dataset != "toy" and not Path(root).is_dir():
            raise DataError(f"data.root '{root}' does not exist. Expected {NAMES[dataset]} layout: {LAYOUTS[dataset]}. "
                            "Point --data.root at your copy, or use --data.dataset toy")  # fmt: skip
        self.height, self.width, self.seq_len, self.num_instances = height, width, seq_len, num_instances
        self.pad = round(10 * height / 256) if pad is None else pad
        self.test_sampling, self.max_clips, self.eval_batch_size = test_sampling, max_clips, eval_batch_size
        self.gallery_includes_query = gallery_includes_query
        self.toy_options = dict(train_ids=toy_train_ids, test_ids=toy_test_ids, tracklets_per_id=toy_tracklets_per_id,
                                height=height, width=width, domain=toy_domain, seed=seed)  # fmt: skip
        self.test_root, self.test_dataset = test_root, test_dataset
        self.toy_test_options = {**self.toy_options, "domain": toy_test_domain}
        self._splits: TrackletSplits | None = None
        self._eval_splits: TrackletSplits | None = None
        self.single_camera_queries = 0
        self.train_dataset: TrackletTrainDataset | None = None
        self.eval_dataset: TrackletEvalDataset | None = None

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            from datamodules.toy.pedestrians import write_synthetic_tracklets

            ensure_written(self.root, write_synthetic_tracklets, **self.toy_options)
        if self.test_root is not None and self.test_dataset == "toy":
            from datamodules.toy.pedestrians import write_synthetic_tracklets

            ensure_written(self.test_root, write_synthetic_tracklets, **self.toy_test_options)

    # -- splits ---------------------------------------------------------------------------------------------------
    @property
    def splits(self) -> TrackletSplits:
        """The splits (read once), with single-camera queries left out."""
        if self._splits is None:
            raw = read_tracklets(self.root, self.dataset, self.gallery_includes_query)
            splits, single = filter_single_camera_queries(raw)
            if single:
                log.info("%s: %d of %d queries have no gallery tracklet of their identity from another camera; left "
                         "out of the evaluation", self.root, single, len(raw.query))  # fmt: skip
            if not splits.train:
                raise DataError(f"{self.root}: the training split holds no tracklets")
            if not splits.query or not splits.gallery:
                raise DataError(f"{self.root}: the evaluation needs query and gallery tracklets; found "
                                f"{len(splits.query)} usable queries ({single} left out for having one camera) and "
                                f"{len(splits.gallery)} gallery tracklets")  # fmt: skip
            self._splits, self.single_camera_queries = splits, single
        return self._splits

    @property
    def eval_splits(self) -> TrackletSplits:
        """The query and gallery of the evaluation: ``splits`` itself, or those of ``test_root`` (cross-domain)."""
        if self.test_root is None:
            return self.splits
        if self._eval_splits is None:
            raw = read_tracklets(self.test_root, self.test_dataset, self.gallery_includes_query)
            splits, single = filter_single_camera_queries(raw)
            if not splits.query or not splits.gallery:
                raise DataError(f"{self.test_root}: the evaluation needs query and gallery tracklets; found "
                                f"{len(splits.query)} usable queries ({single} left out for having one camera) and "
                                f"{len(splits.gallery)} gallery tracklets")  # fmt: skip
            log.info("cross-domain evaluation on %s (%s): %d queries (%d single-camera left out), %d gallery",
                     self.test_root, self.test_dataset, len(splits.query), single, len(splits.gallery))  # fmt: skip
            self._eval_splits = splits
        return self._eval_splits

    @property
    def num_classes(self) -> int:
        """Training identities (the classifier's outputs)."""
        return len({t.pid for t in self.splits.train})

    @property
    def num_query(self) -> int:
        """Query tracklets in the evaluation (after the single-camera filter)."""
        return len(self.eval_splits.query)

    def setup(self, stage: str | None = None) -> None:
        splits = self.splits
        if stage in ("fit", None):
            transform = ClipTransform(self.height, self.width, train=True, pad=self.pad)
            self.train_dataset = TrackletTrainDataset(splits.train, self.seq_len, transform, self.seed,
                                                      self.on_corrupt)  # fmt: skip
        if stage in ("fit", "validate", "test", None):
            evaluation = self.eval_splits
            transform = ClipTransform(self.height, self.width, train=False)
            self.eval_dataset = TrackletEvalDataset(evaluation.query, evaluation.gallery, self.seq_len,
                                                    self.test_sampling, self.max_clips, transform,
                                                    self.on_corrupt)  # fmt: skip

    # -- checks ---------------------------------------------------------------------------------------------------
    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """``python -m experiments data check``: identities, cameras, tracklets and frames per split, the queries
        left out for having a single camera, and every problem found (each naming its file). Returns
        ``(summary, problems)``."""
        try:
            raw = read_tracklets(self.root, self.dataset, self.gallery_includes_query)
        except DataError as err:
            return {}, [str(err)]
        splits, single = filter_single_camera_queries(raw)
        summary = {name: split_summary(getattr(splits, name)) for name in ("train", "query", "gallery")}
        summary["query"]["single_camera_left_out"] = single
        problems = []
        for name in ("train", "query", "gallery") if decode else ():
            for tracklet in getattr(raw, name):
                for frame in tracklet.frames:
                    try:
                        load_rgb(frame)
                    except DataError as err:
                        problems.append(str(err).split(". Replace")[0])
        if not splits.query:
            problems.append(f"{self.root}: no query has a gallery tracklet of its identity from another camera")
        return summary, problems

    def describe(self) -> str:
        """A short multi-line summary (ids, cameras, tracklets, frames per split), without decoding frames."""
        summary, problems = self.check_dataset(decode=False)
        lines = [f"{self.dataset} at {self.root}"]
        lines += [f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) for name, counts in summary.items()]
        lines += [f"  problem: {p}" for p in problems]
        return "\n".join(lines)

    # -- loaders --------------------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        rank, world = self._rank()
        sampler = PKSampler(self.train_dataset.labels, self.batch_size, self.num_instances, self.seed,
                            num_replicas=world, rank=rank)  # fmt: skip
        return self.loader(self.train_dataset, train=True, sampler=sampler, drop_last=True)

    def eval_dataloader(self) -> DataLoader:
        if self.eval_dataset is None:
            self.setup("test")
        rank, world = self._rank()
        sampler = None
        if world > 1:
            sampler = DistributedSampler(self.eval_dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(
            self.eval_dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_eval,
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader()
