"""inspector: which calls happened, with which service, and who received data during them.

Public API::

    import inspector
    result = inspector.analyze(["call.pcapng"])     # -> inspector.Analysis
    result.flows          # pandas DataFrame, columns of inspector.schema.FLOW_COLUMNS
    result.manifest       # chain-of-custody dict (what manifest.json holds)
    result.write("out/")  # flows.csv ... and manifest.json

Heavy modules (numpy, pandas) are imported on first use, so ``inspector --version`` starts fast.
"""

from inspector import native as _native
from inspector._version import __version__

# Before any dissector is imported: compiled (mypyc) or pure-Python modules, never a stale mix.
_native.select()

__all__ = ["__version__", "analyze", "Analysis", "AnalyzeOptions"]


def __getattr__(name: str):
    if name in ("analyze", "Analysis"):
        from inspector import api

        return getattr(api, name)
    if name == "AnalyzeOptions":
        from inspector.pipeline import AnalyzeOptions

        return AnalyzeOptions
    raise AttributeError(f"module 'inspector' has no attribute {name!r}")
