"""The Lua scripts that make each multi-key Redis step atomic."""

from importlib import resources


def load(name: str) -> str:
    """Return the source of ``<name>.lua`` shipped beside this module."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")
