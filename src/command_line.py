"""The command line of every entry point, checked before Hydra composes anything: what cannot
work is said in one line, with exit status 2, as every other bad input is (src/errors.py)."""

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException


def run_command_line(main: Callable[[], object]) -> None:
    """Call a `@hydra.main` function on this process's command line, refusing first what the
    checks below find, then what Hydra cannot compose (optimizer.lr=abc), each in one line."""
    args = sys.argv[1:]
    refusal = unreadable_value(args) or unknown_option(args) or missing_extra(args)
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


def unreadable_value(args: list[str]) -> str | None:
    """The first override whose value Hydra's parser cannot turn into a value at all (an integer
    of 5,000 digits, past Python's limit for converting one), named with its key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        if "=" not in arg or arg.startswith("-"):
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException:
            continue  # malformed: Hydra's own message says where
        except ValueError as err:
            said = str(err).split(";")[0]  # not its advice to the programmer
            return f"{arg.partition('=')[0].lstrip('+~')}: {said}"
    return None


def unknown_option(args: list[str], conf: Path = Path(__file__).parents[1] / "conf") -> str | None:
    """The first `group=option` on the command line (a sweep's options included) that names no
    file of that group under conf/, said in one line with the valid options; None if all do.

    Hydra finds it too, but only after composing, in a dozen lines with its search path.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides(
            [arg for arg in args if "=" in arg and not arg.startswith("-")]
        )
    except Exception:  # a malformed override: Hydra's own message, or unreadable_value's
        return None
    for override in overrides:
        group = conf / override.key_or_group
        if not group.is_dir() or override.is_delete() or override.key_or_group == "hydra":
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        if override.is_sweep_override():
            chosen = list(override.sweep_string_iterator())
        else:
            chosen = [override.value()]
        for option in chosen:
            if option is not None and str(option) != "null" and str(option) not in options:
                return (f"{override.key_or_group}={option} is not one of: {', '.join(options)} "
                        f"(conf/{override.key_or_group}/)")  # fmt: skip
    return None


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
    key = getattr(cause, "full_key", None)
    said = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    # `experiment=nand`, the habit of templates whose defaults list has an experiment slot: here
    # an experiment (a debug preset, a sweep) is added to the defaults, with a +.
    added = re.fullmatch(r"Could not override '([\w/]+)'\. No match in the defaults list\.", said)
    if added:
        given = next((arg for arg in args if arg.startswith(f"{added[1]}=")), added[1])
        return f"{given}: {added[1]} is not in the defaults list; add it with +{given}"
    return f"{key}: {said}" if key else said
