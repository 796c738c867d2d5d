"""syncd keeps a Qdrant collection an exact mirror of folders of documents."""


def __getattr__(name: str) -> str:
    # importlib.metadata costs ~30 ms of start-up; only `--version` needs it.
    if name != "__version__":
        raise AttributeError(f"module 'syncd' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("syncd")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0"
