"""Video re-ID dataset formats: one reader per layout (MARS, DukeMTMC-VideoReID, LS-VID), the :class:`Tracklet`
and :class:`TrackletSplits` records they return, and the filter that leaves out queries no gallery tracklet from
another camera can match. Readers check every file against the layout and raise a DataError naming it.

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

"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.images import IMAGE_EXTENSIONS
from suite_base.errors import ConfigError, CorruptFileError, DataError

# the re-ID data's one log channel, named after the module that held these readers before the split
log = logging.getLogger("datamodules.tracklets")

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
