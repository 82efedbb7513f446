"""Config files that extend shared bases.

A config may name the files it extends under a top-level ``base:`` key (one path or a list, each relative to the
file that names it; a base may name bases of its own). ``fit --config configs/stt/mars.yaml`` then reads as
``fit --config <its bases, deepest first> --config configs/stt/mars.yaml``: later files override earlier ones key by
key (mappings merge, lists and scalars are replaced), and the command line overrides them all. One exception: an
argument typed as a plain ``dict`` (``kwargs``, ``rcnn_kwargs``) is a value to the CLI's parser and is replaced whole,
so a config that changes one entry of it writes the whole dict. Files whose name
starts with ``_`` are bases, not runnable configs (``configs/stt/_base.yaml``).

Values shared between sections are written once and interpolated (``seq_len: ${model.init_args.net.init_args.
seq_len}``). The CLI parses in jsonargparse's ``omegaconf+`` mode, which resolves interpolation after every file and
the command line are merged, so ``--model.init_args.net.init_args.seq_len 4`` reaches every ``${...}`` use of it.

Tools that read a config without the CLI's parser (``data check``, ``bench``, ``launch``, ``rate_curve``, tests)
call :func:`load_config`, which merges the same stack the same way and resolves it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from suite_base.errors import ConfigError

BASE_KEY = "base"
CONFIG_FLAGS = ("--config", "-c")


def is_base_config(path: str | Path) -> bool:
    """Bases are named ``_<name>.yaml``: partial configs other configs extend, never run on their own."""
    return Path(path).name.startswith("_")


def run_config_files(root: str | Path = "configs") -> list[Path]:
    """Every YAML file under ``root`` that is not a base (:func:`is_base_config`), sorted."""
    return sorted(p for p in Path(root).rglob("*.yaml") if not is_base_config(p))


def _read(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"config '{path}' cannot be read ({err.strerror or err}); check the path") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (model, data, trainer), not {type(raw).__name__}")
    return raw


def bases_of(path: Path, raw: dict) -> list[Path]:
    """The files ``raw`` (read from ``path``) extends, resolved against ``path``'s folder."""
    named = raw.get(BASE_KEY)
    if named is None:
        return []
    if isinstance(named, str):
        named = [named]
    if not isinstance(named, list) or not all(isinstance(item, str) for item in named):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path or a list of paths (relative to {path.parent})")
    found = []
    for item in named:
        base = (path.parent / item) if not Path(item).is_absolute() else Path(item)
        if not base.is_file():
            raise ConfigError(f"{path}: its base '{item}' does not exist (looked for {base}); fix '{BASE_KEY}:'")
        found.append(base)
    return found


def config_stack(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """``path``'s bases (each preceded by its own bases, deepest first) and then ``path``, each file once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config '{path}' does not exist")
    key = path.resolve()
    if key in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, key))
        raise ConfigError(f"{path}: its bases name each other in a circle ({chain}); remove one '{BASE_KEY}:' entry")
    stack: list[Path] = []
    for base in bases_of(path, _read(path)):
        for item in config_stack(base, (*_seen, key)):
            if item.resolve() not in {p.resolve() for p in stack}:
                stack.append(item)
    return [*stack, path]


def expand_config_args(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config X`` (``--config=X``, ``-c X``) replaced by ``--config B`` for every base of X
    and then ``--config X``. When a base was added, ``--base=null`` ends the list, so that the config a run saves
    (and ``--print_config`` prints), whose values already hold the bases', does not name them again."""
    out: list[str] = []
    expanded = False
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if name in CONFIG_FLAGS and (eq or i + 1 < len(argv)):
            if not eq:
                value = argv[i + 1]
                i += 1
            path = Path(value)
            if path.suffix in (".yaml", ".yml") and path.is_file():
                stack = config_stack(path)
                expanded |= len(stack) > 1
                for item in stack:
                    out += ["--config", str(item)]
            else:  # a YAML string or a missing file: the parser reports it as it always did
                out += ["--config", value]
        else:
            out.append(token)
        i += 1
    out = nested_nulls_as_dicts(out)
    return [*out, f"--{BASE_KEY}=null"] if expanded else out


NULLS = ("null", "None", "none", "~", "Null", "NULL")


def nested_nulls_as_dicts(argv: list[str]) -> list[str]:
    """``--a.init_args.net.init_args.key null`` rewritten as ``--a.init_args.net '{"init_args": {"key": null}}'``.

    jsonargparse (4.53) parses a null given to a key of a network nested inside a class's init_args as the string
    ``'None'`` (``str | None``) or refuses it (``int | None``), while the same null in the dict form of the network
    merges into its init_args as ``None`` (tested in tests/experiments/test_configs.py). Other tokens are kept."""
    import json

    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if not eq and i + 1 < len(argv):
            value = argv[i + 1]
        if name.startswith("--") and name.count(".init_args.") >= 2 and value in NULLS and (eq or i + 1 < len(argv)):
            owner, _, key = name.rpartition(".init_args.")
            leaf: dict = {}
            node = leaf
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = None
            out += [owner, json.dumps({"init_args": leaf})]
            i += 1 if eq else 2
            continue
        out.append(token)
        i += 1
    return out


def merged_config(path: str | Path) -> dict:
    """The merged, unresolved stack of ``path`` as plain YAML data (``${...}`` kept), without ``base``."""
    from omegaconf import OmegaConf

    merged = OmegaConf.create({})
    for item in config_stack(path):
        raw = dict(_read(item))
        raw.pop(BASE_KEY, None)
        merged = OmegaConf.merge(merged, OmegaConf.create(raw))
    return OmegaConf.to_container(merged, resolve=False)


def load_config(path: str | Path, resolve: bool = True) -> dict:
    """``path`` merged over its bases as the CLI merges them, ``${...}`` resolved (``${oc.env:VAR,default}`` reads
    the environment) unless ``resolve`` is false."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    merged = merged_config(path)
    if not resolve:
        return merged
    try:
        return OmegaConf.to_container(OmegaConf.create(merged), resolve=True) or {}
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from err
