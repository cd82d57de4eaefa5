"""Checkpoints and the run folders around them: written whole, read as untrusted input.

A checkpoint is read with weights-only loading (tensors and plain values, never code), and the
module it holds weights for is built from its run's config (which it carries); that config may
only build the project's own and PyTorch's classes (or a module the user allows by name), so a
checkpoint or run folder from someone else runs no code of theirs. Nor does its config resolve
anything here: it may refer to its own keys but call no resolver (`${oc.env:...}` would read this
machine's environment), and each object's keys are checked against its class's signature. A config
that cannot be built is refused in one line naming the file and the key, before anything is built.

A run reads its checkpoint once: what it resumes from is what was checked.
"""

import importlib
import inspect
import io
import logging
import re
import types
import typing
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.errors import ConfigError, InputError
from src.records import write_text
from src.resume import resume_changes

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer and reader, but each checkpoint goes to a temporary file
    beside it and is renamed into place: a full disk or a crash mid-write leaves the previous one
    whole (Lightning writes in place), and the error names the file. Every read is weights-only,
    and the checkpoint a run read before its fit (`hand_over`) is not read from its file again."""

    def __init__(self):
        super().__init__()
        self.handed: tuple[Path, dict] | None = None

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO writes local files: it takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(path), buffer.getvalue())

    def load_checkpoint(self, path, *args, **kwargs) -> dict:
        """Every checkpoint a Trainer here reads, read weights-only: the run's resumes and tests
        ask for it, and Lightning's own reads that do not (Tuner.lr_find restoring the model it
        probed) would otherwise leave it to PyTorch's default, which an environment variable
        (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) turns off."""
        if self.handed is not None and Path(path) == self.handed[0]:
            checkpoint, self.handed = self.handed[1], None  # Lightning's to change as it restores
            return checkpoint
        return super().load_checkpoint(path, *args, **{**kwargs, "weights_only": True})


def check_checkpoint(path: Path) -> None:
    """A Lightning checkpoint is a torch.save zip archive; anything else is refused here."""
    if path.is_dir():
        raise ConfigError(f"ckpt_path={path} is a directory: give the path of a .ckpt file")
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist: give the path of a .ckpt file")
    if not zipfile.is_zipfile(path) or not any(
        name.endswith("/data.pkl") for name in zipfile.ZipFile(path).namelist()
    ):
        raise ConfigError(f"ckpt_path={path} is not a PyTorch/Lightning checkpoint")


def run_config(ckpt: Path) -> tuple[DictConfig, Path]:
    """The composed config of the run that wrote `ckpt` (its model and data settings), and the
    file it was read from."""
    path = ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise InputError(
            f"{path} not found: use a checkpoint inside the run directory that training wrote "
            "it to (its .hydra/config.yaml says which model and data it used)"
        )
    try:
        config = OmegaConf.load(path)
    except Exception as err:  # YAML's or OmegaConf's own words for what is wrong
        reason = str(err).strip().splitlines()[0]
        raise InputError(f"{path} is not a readable run config ({reason})") from None
    if not isinstance(config, DictConfig):
        raise InputError(f"{path} is not a run config (not a mapping of settings)")
    return config, path


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, loaded weights-only; one clear error for anything else."""
    import pickle

    check_checkpoint(path)
    try:
        with warnings.catch_warnings():  # torch's warnings about what it then refuses, below
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only loading met something other than tensors and plain values: never run it.
        lines = str(err).strip().splitlines()
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise InputError(
            f"ckpt_path={path} was refused by weights-only loading ({reason.strip()}): it holds "
            "something other than tensors and plain values, which is never run"
        ) from None
    except Exception as err:  # a damaged archive: torch says why in its own words
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"ckpt_path={path} is not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise InputError(f"ckpt_path={path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def check_weights_fit(checkpoint: dict, module, path: Path) -> None:
    """Refuse, in one line, a checkpoint of another network (other layers or other sizes)."""
    mine, theirs = module.state_dict(), checkpoint["state_dict"]
    other = sorted(k for k in mine.keys() & theirs.keys() if mine[k].shape != theirs[k].shape)
    unmatched = sorted(mine.keys() ^ theirs.keys())
    if other or unmatched:
        first = other[0] if other else unmatched[0]
        shapes = (f": {tuple(theirs[first].shape)} there, {tuple(mine[first].shape)} here"
                  if other else ", which only one of them has")  # fmt: skip
        raise InputError(
            f"ckpt_path={path} holds the weights of another network ({first}{shapes}): use it "
            "with the settings of the run that wrote it"
        )


@dataclass
class Resume:
    """The checkpoint a run continues from, read and checked, and the settings the run changes
    (None: the checkpoint does not say its settings)."""

    path: Path
    checkpoint: dict
    changes: dict[str, list] | None


def resume_from(cfg: DictConfig) -> Resume | None:
    """The run's `ckpt_path`, read and its settings compared with the run's; None for a new run."""
    if not cfg.get("ckpt_path"):
        return None
    path = Path(cfg.ckpt_path)
    checkpoint = read_checkpoint(path)
    # The config it keeps is only compared with this run's, as written: never resolved, never built.
    changes = resume_changes(cfg, stored_config(checkpoint, path), path)
    if changes:
        listed = ", ".join(f"{key}: {then} → {now}" for key, (then, now) in changes.items())
        log.info("resuming with changed settings: %s", listed)
    return Resume(path, checkpoint, changes)


def hand_over(resume: Resume, trainer) -> None:
    """Give the trainer's checkpoint reader the checkpoint already read, so that fit restores what
    was checked; a reader other than AtomicCheckpointIO (a config's own) reads the file itself."""
    if isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        trainer.strategy.checkpoint_io.handed = (resume.path, resume.checkpoint)


TRUSTED = ("src.", "torch.nn.", "torch.optim.")


def check_targets(node, allow: list[str], path: str) -> None:
    """Refuse any `_target_` under `node` (plain values) that is not a class of the project, of
    PyTorch, or of a module named in `allow`: building it would run code the run folder chose."""
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{path}.{key}"
            if key == "_target_":
                check_target(str(value), allow, name)
            else:
                check_targets(value, allow, name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, allow, f"{path}[{i}]")


def check_target(target: str, allow: list[str], key: str) -> None:
    """Refuse a `_target_` that is not a class defined in the project, in PyTorch or in a module of
    `allow`: where it is defined counts, not where it is imported from (`src.loggers.FileWriter`
    is TensorBoard's)."""
    if not trusted(target, allow):
        module = target.rsplit(".", 1)[0]
        raise InputError(
            f"{key}={target} is not one of the project's or PyTorch's classes, so it is not built "
            f"from a run folder: if you trust this run, allow its module with allow=[{module}]"
        )
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise InputError(f"{key}={target} does not exist here") from None
    if not isinstance(found, type):
        raise InputError(f"{key}={target} is not a class: a run folder may only build classes")
    defined = f"{found.__module__}.{found.__qualname__}"
    if not trusted(defined, allow):
        raise InputError(
            f"{key}={target} is {defined}, defined outside the project and PyTorch, so it is not "
            f"built from a run folder: if you trust this run, allow its module with "
            f"allow=[{found.__module__}]"
        )


def trusted(name: str, allow: list[str]) -> bool:
    """Whether a dotted name lies in the project, PyTorch's layers and optimizers, or `allow`."""
    return name.startswith(TRUSTED) or any(name == a or name.startswith(f"{a}.") for a in allow)


# The one interpolation a run folder's config may hold: a reference to another of its own keys
# (`${seed}`, `${paths.data_dir}`, `${.gate}`), which copies a value the file itself holds.
REFERENCE = re.compile(r"\$\{(\.*)([\w-]+(?:\.[\w-]+)*)\}")
RESOLVER = re.compile(r"\$\{\s*([\w.-]+)\s*:")
PLAIN = (str, int, float, bool, type(None))
PARTS = ("model", "data")  # what src.eval and src.predict build from a run folder's config


def refused(source: str, key: str, problem: str) -> InputError:
    """A run folder's config that cannot be used, in one line: the file, the key, what to do."""
    return InputError(f"{source}: {key} {problem}, so its run cannot be rebuilt from it: train "
                      "again, or use another run")  # fmt: skip


def stored_config(checkpoint: dict, ckpt: Path) -> dict | None:
    """The config of the run kept in `checkpoint` (None where it keeps none), refused unless it is
    a mapping of plain values: what a resume compares and src.eval rebuilds."""
    config = checkpoint.get("config")
    if config is not None:
        check_plain(config, f"the config in ckpt_path={ckpt}")
    return config


def check_plain(config, source: str) -> None:
    """Refuse a config that is not a mapping of mappings, lists and plain values (weights-only
    loading lets tensors and bytes through too, which no setting is)."""
    if not isinstance(config, dict):
        raise refused(source, "its top", f"is a {type(config).__name__}, not a mapping of settings")

    def check(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise refused(source, f"{key or 'its top'} key {k!r}", "is not a name")
                check(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check(v, f"{key}[{i}]")
        elif not isinstance(value, PLAIN):
            raise refused(source, key, f"holds a {type(value).__name__}, not a plain value")

    check(config, "")


def dotted(path: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def find(plain, keys) -> tuple | None:
    """The path of `keys` in `plain` (list positions as ints), or None where it has no such key."""
    node, path = plain, ()
    for key in keys:
        if isinstance(node, dict) and key in node:
            node, path = node[key], (*path, key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node, path = node[int(key)], (*path, int(key))
        else:
            return None
    return path


def check_references(plain: dict, path: tuple, source: str, seen: set) -> None:
    """Refuse, under `path` of a run folder's config and in every key it refers to, a value never
    set (`???`) and any interpolation other than a reference to one of the config's keys.

    A run folder is data, written by whoever sent it; a resolver runs when the config is resolved,
    here. `${oc.env:...}` would copy this machine's environment (a token, a home directory) into a
    network's arguments and from there into logs and records; a resolver of Hydra's or the
    project's reads this process's state, and an unknown one only fails. A reference copies a
    value the file holds, so it is followed, and the value it reaches checked in turn.
    """
    value = plain
    for key in path:
        value = value[key]
    if isinstance(value, dict | list):
        for key in value if isinstance(value, dict) else range(len(value)):
            check_references(plain, (*path, key), source, seen)
        return
    if value == "???":
        raise refused(source, dotted(path), "is ??? (a value never set)")
    if not isinstance(value, str) or "${" not in value:
        return
    if "\\${" in value or "${" in REFERENCE.sub("", value):
        resolver = RESOLVER.search(value)
        what = f"the resolver {resolver[1]}" if resolver else "an interpolation"
        raise refused(source, f"{dotted(path)}={value}", f"calls {what}, which a run folder's "
                      "config may not (it may refer to its own keys, as ${seed} does)")  # fmt: skip
    for dots, name in REFERENCE.findall(value):
        base = path[: len(path) - len(dots)] if dots else ()  # `.` is the node holding the value
        target = find(plain, (*base, *name.split("."))) if len(dots) <= len(path) else None
        if target is None:
            raise refused(source, f"{dotted(path)}={value}", f"refers to {name}, which the config "
                          "does not have")  # fmt: skip
        if target not in seen:
            seen.add(target)
            check_references(plain, target, source, seen)


def fits(value, hint) -> bool:
    """Whether a config value fits the type a class's argument is annotated with (True for the
    types not checked here: a nested object's, a callable's)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # an int is a float's value too, as OmegaConf's types have it
        number = isinstance(value, int if hint is int else int | float)
        return number and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(fits(v, args[0]) for v in value if args)
    return True


def check_arguments(node, key: str, source: str) -> None:
    """Refuse an object of a run folder's config (resolved, its targets checked) whose keys its
    class does not take, or leave out one it needs, or whose value is not of the annotated type:
    the class's signature says, before anything is built."""
    if isinstance(node, list):
        for i, value in enumerate(node):
            check_arguments(value, f"{key}[{i}]", source)
        return
    if not isinstance(node, dict):
        return
    for name, value in node.items():
        check_arguments(value, f"{key}.{name}", source)
    if "_target_" not in node:
        return
    target = node["_target_"]
    module_name, _, name = target.rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module_name), name)).parameters
    given = {k: v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
    named = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for arg in given.keys() - named.keys():
            takes = ", ".join(named) or "no arguments"
            raise refused(source, f"{key}.{arg}", f"is not an argument of {target} ({takes})")
    if "_args_" not in node and not node.get("_partial_"):
        for arg, p in named.items():
            if p.default is p.empty and arg not in given:
                raise refused(source, key, f"has no {arg}, which {target} needs")
    for arg, value in given.items():
        if arg in named and not fits(value, named[arg].annotation):
            hint = named[arg].annotation
            kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise refused(source, f"{key}.{arg}={value!r}", f"is not of type {kind}, which "
                          f"{target} takes")  # fmt: skip


def checked(run_cfg: DictConfig, plain: dict, part: str, source: str, allow: list[str]) -> dict:
    """`part` of a run folder's config, resolved, once nothing in it could run code of the folder's
    (`check_references`, `check_targets`) or fail to build for its keys (`check_arguments`)."""
    check_references(plain, (part,), source, set())
    try:
        resolved = OmegaConf.to_container(run_cfg[part], resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:  # a reference in a loop, say: OmegaConf says which
        reason = str(err).strip().splitlines()[0]
        raise refused(source, err.full_key or part, f"cannot be resolved ({reason})") from None
    check_targets(resolved, allow, part)
    check_arguments(resolved, part, source)
    return resolved


def build(node: dict, part: str, source: str):
    """The object `node` (a `checked` part of a run folder's config) describes; its class refusing
    the values it is given is said in one line, naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        # A value its class refuses (a size of -5, too few of them, a keyword torch's own Module
        # does not take); anything else is a bug here and keeps its traceback.
        if not isinstance(cause, TypeError | ValueError | RuntimeError | InputError):
            raise
        found = re.search(r"full_key: (\S+)", str(err))  # the node that failed, as Hydra says it
        key = f"{part}.{found[1]}" if found else part
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        said = reason if isinstance(cause, InputError) else f"{type(cause).__name__}: {reason}"
        raise refused(source, key, f"cannot be built ({said})") from None


def load_run(ckpt: Path, allow: list[str] = (), data_dir: str | None = None):
    """(the module with the checkpoint's weights, in eval mode; the datamodule of its run; the
    checkpoint), built from the run's config: kept in the checkpoint or, for an older one, its
    run's .hydra/config.yaml. `data_dir` replaces the run's data.data_dir.

    Both are checked before either is built, the one place a run folder's config becomes objects.
    """
    checkpoint = read_checkpoint(ckpt)
    config, source = stored_config(checkpoint, ckpt), f"the config in ckpt_path={ckpt}"
    if config is None:
        found, path = run_config(ckpt)
        config, source = OmegaConf.to_container(found, resolve=False), str(path)
        check_plain(config, source)
    for part in PARTS:
        if not isinstance(config.get(part), dict):
            raise refused(source, part, "is missing (it is not the config of a training run)")
    if data_dir is not None:
        config = {**config, "data": {**config["data"], "data_dir": data_dir}}
    run_cfg = OmegaConf.create(config)
    model, data = [checked(run_cfg, config, part, source, list(allow)) for part in PARTS]

    module = build(model, "model", source)
    check_weights_fit(checkpoint, module, ckpt)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    return module, build(data, "data", source), checkpoint
