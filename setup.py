"""Package discovery for the ``edgefleet`` distribution (everything else is in pyproject.toml).

The source folders sit at the top of the repository but install only under the
``edgefleet.`` namespace. setuptools' ``find`` cannot rename folders, so every folder
with an ``__init__.py`` under a mapped root is listed here: a new package can never be
left out of the wheel by forgetting to list it.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "agent": "edgefleet.agent",
    "fleet_server": "edgefleet.fleet_server",
    "federated": "edgefleet.federated",
    "tools": "edgefleet.tools",
}
HERE = Path(__file__).parent


def _packages() -> list[str]:
    names = []
    for folder, dotted in ROOTS.items():
        for init in sorted((HERE / folder).rglob("__init__.py")):
            parts = init.parent.relative_to(HERE / folder).parts
            names.append(".".join((dotted, *parts)))
    return names


setup(packages=_packages())
