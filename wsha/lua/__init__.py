"""The Lua scripts that make each multi-key Redis step atomic."""

from importlib import resources

_NAMES: dict[str, str] = {}


def load(name: str) -> str:
    """Return the source of ``<name>.lua`` shipped beside this module."""
    source = resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")
    _NAMES[source] = name
    return source


def name_of(source: str) -> str:
    """The name of a script returned by :func:`load` ("script" if it is not one)."""
    return _NAMES.get(source, "script")
