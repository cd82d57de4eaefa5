"""The command line of every entry point, checked before Hydra composes anything: what cannot
work is said in one line, with exit status 2, as every other bad input is (src/errors.py)."""

import os
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)

from src.console import quiet_console
from src.errors import InputError
from src.ranks import rank_overrides


def run_command_line(main: Callable[[], object]) -> None:
    """Call a `@hydra.main` function on this process's command line, refusing first what the
    checks below find, then what Hydra cannot compose (optimizer.lr=abc), each in one line."""
    quiet_console()  # before Hydra loads its plugins, some of which log as they are imported
    # A rank that torchrun or Lightning started runs its run's command line (src/ranks.py).
    args, refusal = rank_overrides(sys.argv[1:])
    sys.argv[1:] = args
    if not shell_completion(args):
        overrides, parse_refusal = parse(args)
        refusal = refusal or parse_refusal or unknown_option(args, overrides) or missing_extra(args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        sys.exit(2)
    # Hydra reports a command line it cannot compose in several lines and exits with 1; let it
    # raise instead.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as err:
        print(f"error: {composition_error(err, args)}", file=sys.stderr)
        sys.exit(2)
    except InstantiationException as err:  # Hydra building a plugin of this project's
        if not isinstance(err.__cause__, InputError):
            raise
        print(f"error: {err.__cause__}", file=sys.stderr)
        sys.exit(2)


def console_script(main: Callable[[], object]) -> Callable[[], None]:
    """The function of a console script (pyproject.toml) that runs `main` as `python -m` runs
    its module: with the directory it starts in first on sys.path, so that a network of your
    own in that directory (`model.net._target_=my_net.MyNet`) is found the same way."""

    def script() -> None:
        sys.path.insert(0, os.getcwd())
        run_command_line(main)

    return script


def shell_completion(args: list[str]) -> bool:
    """Whether the command line is Hydra's `-sc`/`--shell-completion` (install=bash,
    uninstall=bash, query=bash): it runs nothing, so it is left to Hydra unchecked, and a Tab
    waits for nothing more than Hydra itself. Its overrides (`query=bash`) are not the run's."""
    # argparse takes any unambiguous start of a long flag; `--s` is already only this one.
    return any(arg == "-sc" or (len(arg) > 2 and "--shell-completion".startswith(arg))
               for arg in args)  # fmt: skip


def parse(args: list[str]) -> tuple[list, str | None]:
    """The command line's overrides as Hydra's parser reads them, each parsed once; and a
    refusal for the first whose value it cannot turn into a value at all (an integer of 5,000
    digits, past Python's limit for converting one), named with its key. A malformed one is
    left out: Hydra's own message says where."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = []
    for arg in args:
        if "=" not in arg or arg.startswith("-"):
            continue
        try:
            overrides += parser.parse_overrides([arg])
        except OverrideParseException:
            continue
        except ValueError as err:
            said = str(err).split(";")[0]  # not its advice to the programmer
            return overrides, f"{arg.partition('=')[0].lstrip('+~')}: {said}"
    return overrides, None


# Each entry point's @hydra.main names it absolutely: a relative config_path is taken beside the
# file under `python -m src.train`, but as a package (`pkg://conf`, which there is none of) when
# a console script imports the module.
CONF = Path(__file__).parents[1] / "conf"


def unknown_option(args: list[str], overrides: list) -> str | None:
    """The first `group=option` on the command line (a sweep's options included) that names no
    config file of that group on the search path, said in one line with the valid options; None
    if all do. The search path is conf/ and the folders the command line adds as Hydra takes
    them (`--config-dir`, `hydra.searchpath=[file://...]`); where it adds what is not a folder
    (a `pkg://` entry, `--config-path`), the check is left to Hydra (composition_error).

    Hydra finds it too, but only after composing, in a dozen lines; and in a sweep only when it
    reaches that job.
    """
    roots = search_path(args, overrides)
    if roots is None:
        return None
    for override in overrides:
        name = override.key_or_group
        groups = [root / name for root in roots if (root / name).is_dir()]
        if not groups or override.is_delete() or name == "hydra":
            continue
        options = sorted({p.relative_to(g).with_suffix("").as_posix()
                          for g in groups for p in g.rglob("*.yaml")})  # fmt: skip
        if override.is_sweep_override():
            chosen = list(override.sweep_string_iterator())
        else:
            chosen = [override.value()]
        for option in chosen:
            if option is not None and str(option) != "null" and str(option) not in options:
                where = ", ".join(f"{g.relative_to(CONF.parent) if g.is_relative_to(CONF) else g}/"
                                  for g in groups)  # fmt: skip
                return f"{name}={option} is not one of: {', '.join(options)} ({where})"
    return None


def search_path(args: list[str], overrides) -> list[Path] | None:
    """conf/ and the folders the command line adds to Hydra's search path; None when it adds
    something else."""
    roots = [CONF]
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag in ("--config-path", "-cp", "--config-name", "-cn"):
            return None  # another primary config
        if flag in ("--config-dir", "-cd"):
            value = value or (args[i + 1] if i + 1 < len(args) else "")
            roots.append(Path(value))
    for override in overrides:
        if override.key_or_group == "hydra.searchpath" and not override.is_delete():
            for entry in override.value() or []:
                if not str(entry).startswith("file://"):
                    return None
                roots.append(Path(str(entry).removeprefix("file://")))
    return roots


# `--help`'s group lines: the indent, the label's and the options' columns, the line's width.
HELP_INDENT, HELP_LABEL, HELP_OPTIONS, HELP_WIDTH = 2, 16, 28, 100


def help_group(group: str, note: str = "") -> str:
    """The line of `--help` (conf/hydra/help/train.yaml) for a config group: its options in every
    folder of Hydra's search path, conf/ and those the command line adds (`--config-dir`,
    `hydra.searchpath=[file://...]`), so that an option of one's own is listed without an edit
    here; a `+` where the config chooses none by default; and `note`, what the group is for."""
    from hydra.core.hydra_config import HydraConfig

    runtime = HydraConfig.get().runtime
    folders = [Path(source.path) / group for source in runtime.config_sources
               if source.schema == "file"]  # fmt: skip
    options = sorted({path.stem for folder in folders for path in folder.glob("*.yaml")})
    label = f"{group}:" if group in runtime.choices else f"+{group}:"
    width = HELP_WIDTH - HELP_INDENT - HELP_LABEL
    lines = textwrap.wrap(", ".join(options), width=width, break_on_hyphens=False) or [""]
    if note:
        lines[-1] = f"{lines[-1]:<{HELP_OPTIONS}}  {note}"
    indent = " " * (HELP_INDENT + HELP_LABEL)
    return f"{label:<{HELP_LABEL}}" + f"\n{indent}".join(lines)


def missing_extra(args: list[str]) -> str | None:
    """What to install when the command line asks for an optional part this install lacks."""
    import importlib.util

    searching = any(arg.startswith("hparams_search=") for arg in args)
    if searching and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        return "hparams_search needs Optuna's sweeper: pip install -e .[optuna]"
    return None


def composition_error(err: Exception, args: list[str]) -> str:
    """One line for a command line Hydra cannot compose: the key and what it takes."""
    cause = err.__cause__ or err
    if isinstance(cause, MissingConfigException) and cause.options and cause.missing_cfg_file:
        # An option no folder of Hydra's search path has (one unknown_option could not see).
        group, _, option = cause.missing_cfg_file.rpartition("/")
        return f"{group}={option} is not one of: {', '.join(sorted(cause.options))}"
    key = getattr(cause, "full_key", None)
    said = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    # `experiment=nand`, the habit of templates whose defaults list has an experiment slot: here
    # an experiment (a debug preset, a sweep) is added to the defaults, with a +.
    added = re.fullmatch(r"Could not override '([\w/]+)'\. No match in the defaults list\.", said)
    if added:
        given = next((arg for arg in args if arg.startswith(f"{added[1]}=")), added[1])
        return f"{given}: {added[1]} is not in the defaults list; add it with +{given}"
    return f"{key}: {said}" if key else said
