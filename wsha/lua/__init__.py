"""The Lua scripts that make each multi-key Redis step atomic."""

from importlib import resources

_NAMES: dict[str, str] = {}


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def load(name: str) -> str:
    """Return the source of ``<name>.lua`` shipped beside this module.

    A first line ``-- uses: a, b`` prepends the libraries ``a.lua`` and
    ``b.lua`` (local functions shared by several scripts).
    """
    source = _read(name)
    first = source.split("\n", 1)[0]
    if first.startswith("-- uses:"):
        libraries = [lib.strip() for lib in first[len("-- uses:") :].split(",")]
        source = "\n".join([*(_read(lib) for lib in libraries), source])
    _NAMES[source] = name
    return source


def name_of(source: str) -> str:
    """The name of a script returned by :func:`load` ("script" if it is not one)."""
    return _NAMES.get(source, "script")
