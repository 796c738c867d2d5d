"""syncd keeps a Qdrant collection an exact mirror of folders of documents."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("syncd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
