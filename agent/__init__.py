"""edgefleet device agent: runs models, reports telemetry, installs signed updates.

Everything in this package must stay light enough for a small device: it may depend
only on the ``[agent]`` extra (numpy, onnxruntime, LiteRT, paho-mqtt, tuf, ...).
"""

from importlib.metadata import PackageNotFoundError, version


def agent_version() -> str:
    """The installed edgefleet version (what the agent reports in its inventory)."""
    try:
        return version("edgefleet")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


__all__ = ["agent_version"]
