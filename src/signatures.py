"""A class's arguments as a typed schema, read from its source file: its names, its types as
OmegaConf can check them and its own defaults, like hydra-zen's `builds(...,
populate_full_signature=True)` but without importing the class (importing PyTorch or Lightning
takes seconds, and `--help`, tab completion and the config check come before it)."""

import ast
import dataclasses
import functools
import importlib.util
from dataclasses import field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from src.schedules import RUN_LENGTH

PLAIN_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
NOT_IN_A_CONFIG = ("None", "Tensor", "torch.Tensor")  # members of a union a config never holds
SEQUENCES = ("list", "tuple", "List", "Tuple", "Sequence")


def module_file(module: str) -> Path | None:
    """The source file of a dotted module, found without importing it or its package."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not rest:
        return Path(spec.origin) if spec and spec.origin else None
    base = Path(spec.submodule_search_locations[0]).joinpath(*rest)
    return next((p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()), None)


@functools.cache
def parsed(path: Path) -> ast.Module:
    """A source file's syntax tree, read once."""
    return ast.parse(path.read_text(encoding="utf-8"))


def class_node(target: str) -> ast.ClassDef | None:
    """The class a dotted path names, read from its module's source, following the module's
    imports of it (`torch.optim.SGD` is defined in torch/optim/sgd.py)."""
    module, _, name = target.rpartition(".")
    path = module_file(module)
    for node in parsed(path).body if path else ():
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
        alias = next((a for a in getattr(node, "names", ()) if (a.asname or a.name) == name), None)
        if isinstance(node, ast.ImportFrom) and alias:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            origin = node.module if not node.level else ".".join(filter(None, (base, node.module)))
            return class_node(f"{origin}.{alias.name}")
    return None


def union_members(annotation: ast.expr) -> list[ast.expr]:
    """The types an annotation allows, as written: `Optional[Union[int, float]]` is int, float,
    None."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return union_members(annotation.left) + union_members(annotation.right)
    outer = ast.unparse(annotation.value) if isinstance(annotation, ast.Subscript) else None
    if outer not in ("Optional", "Union"):
        return [annotation]
    inner = annotation.slice
    members = [m for e in getattr(inner, "elts", [inner]) for m in union_members(e)]
    return members + [ast.Constant(None)] if outer == "Optional" else members


def plain_type(annotation: ast.expr) -> Any:
    """The one type OmegaConf can check that a config may give for an annotation, or None:
    `float | Tensor` is float, `tuple[float, float]` a list of floats."""
    kinds = [m for m in union_members(annotation) if ast.unparse(m) not in NOT_IN_A_CONFIG]
    if len(kinds) != 1:
        return None
    kind = kinds[0]
    if isinstance(kind, ast.Subscript) and ast.unparse(kind.value) in SEQUENCES:
        items = getattr(kind.slice, "elts", [kind.slice])
        item_types = {plain_type(e) for e in items if not isinstance(e, ast.Constant)}
        item = item_types.pop() if len(item_types) == 1 else None
        return list[item] if item in PLAIN_TYPES.values() else None
    return PLAIN_TYPES.get(ast.unparse(kind))


def omegaconf_type(annotation: ast.expr | None, default) -> Any:
    """An annotation as OmegaConf can check it: one plain type, or None too; anything else (a
    union of types, a class, an alias) Any."""
    kind = plain_type(annotation) if annotation is not None else None
    if kind is None:
        return Any
    takes_none = any(ast.unparse(m) == "None" for m in union_members(annotation))
    return kind | None if takes_none or default is None else kind


def arguments(target: str, partial: bool) -> list[tuple[str, ast.expr | None, ast.expr | None]]:
    """A class's arguments as written: name, annotation, default (None: none). Those of its
    __init__, or of a dataclass its annotated fields; a partial's first argument is left out."""
    body = getattr(class_node(target), "body", [])
    init = next((n for n in body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        fields = [(n.target.id, n.annotation, n.value) for n in body
                  if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]  # fmt: skip
        if not fields:
            raise LookupError(f"no __init__ of {target} found in its source (conf/ types with it)")
        return fields
    args = init.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + args.defaults
    pairs = list(zip(positional, defaults, strict=True))[2 if partial else 1 :]
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
              if not (partial and d is not None)]  # fmt: skip
    return [(arg.arg, arg.annotation, default) for arg, default in pairs]


def signature_fields(target: str, partial: bool, leave_out=()) -> list[tuple[str, Any, Any]]:
    """A class's arguments as dataclass fields: name, type, its own default (MISSING where it has
    none, None where the run's length fills it: src/schedules.py)."""
    fields = []
    for name, annotation, default_node in arguments(target, partial):
        if name in leave_out:
            continue
        if default_node is None:
            default = None if name in RUN_LENGTH else MISSING
        else:
            try:
                default = ast.literal_eval(default_node)
            except ValueError:  # an expression (1.0 / 3): left to the class
                continue
        kind = omegaconf_type(annotation, default)
        if isinstance(default, (list, tuple)):
            default = field(default_factory=functools.partial(list, default))
        fields.append((name, kind, default))
    return fields


@functools.cache
def signed_schema(target: str, partial: bool, leave_out=()) -> type:
    """The schema of a class's arguments, from its signature; a partial's also has `_partial_`."""
    plumbing = [("_target_", str, MISSING)] + ([("_partial_", bool, MISSING)] if partial else [])
    return dataclasses.make_dataclass(
        target.rpartition(".")[2],
        plumbing + signature_fields(target, partial, leave_out),
        namespace={"__module__": __name__, "__doc__": f"{target}'s arguments, typed."},
    )
