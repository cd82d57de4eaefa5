"""The checks a class of the project makes of its own arguments: one line naming the argument and
its value (`hidden_dim=0 is out of range: it must be at least 1`), which the config check says
under the key that set it (`model.net.hidden_dim=0 ...`). Plain Python: the networks import it."""


def require(ok: bool, name: str, value, expectation: str, error: type = ValueError) -> None:
    """Refuse `value` of `name` unless `ok`, saying what it `expectation` (must be ...)."""
    if not ok:
        raise error(f"{name}={value!r} is out of range: it {expectation}")


def one_of(name: str, value, choices, error: type = ValueError) -> None:
    """Refuse a `value` of `name` that is not among `choices`, listing them."""
    if value not in choices:
        raise error(f"{name}={value!r} is not one of: {', '.join(map(str, choices))}")


def at_least(low: int, error: type = ValueError, **values) -> None:
    """Refuse any of `values` (counts, by name) below `low`."""
    for name, value in values.items():
        require(value >= low, name, value, f"must be at least {low}", error)
