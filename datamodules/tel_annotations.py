"""The official TEL annotation format (Li et al., "Dilated Context Integrated Network with Cross-Modal Consensus for
Temporal Emotion Localization in Videos", ACM MM 2022, arXiv 2208.01954): reading, validation, ground-truth instances.

Both released splits map ``{imdb_id: {clip_id: clip}}``; times are ``"HH:MM:SS.mmm-->HH:MM:SS.mmm"`` strings.

* train (clip-level, weak): ``{"emo": {emotion: count}, "time": [interval, ...], "dialog": [text, ...]}``; the count
  is the number of MovieGraphs annotations of the class in the clip and is read as presence (multi-label).
* test (subtitle-level): ``{"emo": {emotion: {"time": [...], "dialog": [...], "segment": [unit, ...]}},
  "dialog": [text, ...], "dialog_name": [interval, ...]}``: an emotion occupies the listed subtitle units, and each
  ``emo[e].time[k]`` equals ``dialog_name[segment[k]]``.

The 18 classes follow EMOTIC; the released JSON spells one key ``"aversion "`` (trailing space) and writes the paper's
"Confidence" as ``confident``. A ground-truth instance of a test clip is a maximal run of consecutive annotated units
of one emotion, from the first unit's start to the last unit's end (docs/tel.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from suite_base.errors import DataError
from suite_base.tel import EMOTIONS

CLASS_INDEX = {name: i for i, name in enumerate(EMOTIONS)}
_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[.,](\d{1,3})\s*$")


@dataclass
class Clip:
    """One clip: its subtitle units (times in seconds from the clip's start, texts), clip-level labels, and for test
    clips the annotated units of each emotion (``units[c]``: sorted unit indices of class ``c``)."""

    movie: str
    clip: str
    starts: np.ndarray  # [U] float64 seconds
    ends: np.ndarray  # [U]
    texts: list[str]
    labels: np.ndarray  # [18] bool: the clip holds the class
    units: dict[int, list[int]] | None = None  # test split only
    source: str = ""  # file it came from, for messages
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.movie}/{self.clip}"

    def unit_labels(self) -> np.ndarray:
        """``[U, 18]`` bool: the annotated emotions of each subtitle unit (test clips)."""
        if self.units is None:
            raise DataError(f"{self.key} in {self.source} has clip-level labels only (a training clip)")
        out = np.zeros((len(self.texts), len(EMOTIONS)), dtype=bool)
        for c, units in self.units.items():
            out[units, c] = True
        return out


def parse_time(text: str, where: str) -> float:
    """``HH:MM:SS.mmm`` (or ``,mmm``) -> seconds; a clear error naming ``where`` otherwise."""
    match = _TIME.match(text)
    if match is None:
        raise DataError(f"{where}: malformed time {text!r}; expected HH:MM:SS.mmm")
    h, m, s, ms = match.groups()
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_interval(text: str, where: str) -> tuple[float, float]:
    """``"HH:MM:SS.mmm-->HH:MM:SS.mmm"`` -> ``(start, end)`` seconds, with ``end >= start``."""
    parts = text.split("-->")
    if len(parts) != 2:
        raise DataError(f"{where}: malformed interval {text!r}; expected 'HH:MM:SS.mmm-->HH:MM:SS.mmm'")
    start, end = parse_time(parts[0], where), parse_time(parts[1], where)
    if end < start:
        raise DataError(f"{where}: interval {text!r} ends before it starts")
    return start, end


def emotion_index(name: str, where: str) -> int:
    """Class index of an emotion key (surrounding spaces ignored: the released ``"aversion "``)."""
    key = name.strip().lower()
    if key not in CLASS_INDEX:
        raise DataError(f"{where}: unknown emotion {name!r}; the 18 TEL classes are {', '.join(EMOTIONS)}")
    return CLASS_INDEX[key]


def _intervals(times: list, where: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [parse_interval(t, f"{where}, subtitle {k}") for k, t in enumerate(times)]
    return np.array([p[0] for p in pairs], dtype=np.float64), np.array([p[1] for p in pairs], dtype=np.float64)


def _unit_times(entry: dict, key: str, noun: str, count: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The subtitle intervals under ``key`` (one per subtitle), checked and parsed."""
    if key not in entry:
        raise DataError(f"{where}: the entry needs {key!r} (one interval per subtitle)")
    if len(entry[key]) != count:
        raise DataError(f"{where}: {len(entry[key])} {noun} for {count} subtitles")
    return _intervals(entry[key], where)


def parse_clip(movie: str, clip: str, entry: dict, source: str) -> Clip:
    """One clip of either split (the format is told by the type of the ``emo`` values)."""
    where = f"{source}: {movie}/{clip}"
    if not isinstance(entry, dict) or "emo" not in entry or "dialog" not in entry:
        raise DataError(f"{where}: expected an object with 'emo' and 'dialog' keys")
    emo, texts = entry["emo"], [str(t).strip() for t in entry["dialog"]]
    labels = np.zeros(len(EMOTIONS), dtype=bool)
    if all(isinstance(v, (int, float)) for v in emo.values()):  # training split: clip-level counts
        starts, ends = _unit_times(entry, "time", "times", len(texts), where)
        for name, count in emo.items():
            if count > 0:
                labels[emotion_index(name, where)] = True
        return Clip(movie, clip, starts, ends, texts, labels, None, source)
    starts, ends = _unit_times(entry, "dialog_name", "dialog_name intervals", len(texts), where)
    names = entry["dialog_name"]
    units: dict[int, list[int]] = {}
    for name, spec in emo.items():
        c = emotion_index(name, where)
        if not isinstance(spec, dict) or "segment" not in spec:
            raise DataError(f"{where}, emotion {name!r}: expected {{'time', 'dialog', 'segment'}}")
        segment = [int(k) for k in spec["segment"]]
        bad = [k for k in segment if not 0 <= k < len(texts)]
        if bad:
            raise DataError(f"{where}, emotion {name!r}: subtitle indices {bad} outside 0..{len(texts) - 1}")
        for k, t in zip(segment, spec.get("time", []), strict=False):
            if t != names[k]:
                raise DataError(f"{where}, emotion {name!r}: time {t!r} differs from its subtitle {k}'s {names[k]!r}")
        if segment:
            units[c] = sorted(set(units.get(c, [])) | set(segment))
            labels[c] = True
    return Clip(movie, clip, starts, ends, texts, labels, units, source)


def read_tel(path: str | Path, problems: list[str] | None = None) -> list[Clip]:
    """All clips of one official split file, in file order.

    The first malformed clip entry raises a :class:`DataError` naming the file, the movie/clip id and the key; with a
    ``problems`` list every malformed entry is appended there instead and skipped (``data check`` lists them all).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"TEL annotation file {path} not found; pass the official train.json / test.json path")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {{imdb_id: {{clip_id: clip}}}} at the top level")
    clips = []
    for movie, entries in data.items():
        if not isinstance(entries, dict):
            error = DataError(f"{path}: {movie}: expected {{clip_id: clip}}, got {type(entries).__name__}")
            if problems is None:
                raise error
            problems.append(str(error))
            continue
        for clip, entry in entries.items():
            try:
                clips.append(_parse_checked(movie, clip, entry, str(path)))
            except DataError as err:
                if problems is None:
                    raise
                problems.append(str(err))
    if not clips:
        raise DataError(f"{path}: holds no clips")
    return clips


def _parse_checked(movie: str, clip: str, entry: dict, source: str) -> Clip:
    """:func:`parse_clip`, with a wrongly typed value (a list where an object belongs ...) named like the rest."""
    try:
        return parse_clip(movie, clip, entry, source)
    except DataError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
        raise DataError(f"{source}: {movie}/{clip}: malformed entry ({type(err).__name__}: {err}); expected the "
                        "official train / test clip format (docs/tel.md)") from err  # fmt: skip


def runs(units: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive unit indices, as ``(first, last)`` inclusive pairs."""
    out: list[tuple[int, int]] = []
    for k in sorted(units):
        if out and k == out[-1][1] + 1:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return out


def instances(clip: Clip) -> list[tuple[int, float, float]]:
    """Ground-truth instances ``(class, start s, end s)`` of a test clip: runs of consecutive annotated units."""
    if clip.units is None:
        raise DataError(f"{clip.key} in {clip.source} has no temporal annotation (a training clip)")
    return [
        (c, float(clip.starts[a]), float(clip.ends[b]))
        for c, units in sorted(clip.units.items())
        for a, b in runs(units)
    ]
