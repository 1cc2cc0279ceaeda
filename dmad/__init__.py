"""dmad: compress image-to-image GAN generators with DMAD and ship them to phones.

The installed namespace maps the repository's stage folders: ``dmad.compress`` (``compress/``,
the method), ``dmad.export`` (``export/``) and ``dmad.benchmark`` (``benchmark/``), each importing
only the layers below it. This package itself holds the application on top of all three: the
``dmad`` command line (:mod:`dmad.cli`), ``dmad compress`` (:mod:`dmad.compress_run`) and the
demo that runs it on its own data and teacher (:mod:`dmad.pipeline`).
"""

__version__ = "0.1.0"

#: The Python API (``dmad.compress_generator(...)`` …), imported on first use so that
#: ``import dmad`` stays light: name -> module that defines it.
_API = {
    "compress_generator": "dmad.api", "export_generator": "dmad.api", "bench_files": "dmad.api",
    "Compressed": "dmad.api", "translate": "dmad.translate", "TranslateConfig": "dmad.translate",
    "CompressConfig": "dmad.compress_run", "attach_masks": "dmad.compress.masks",
    "prune": "dmad.compress.prune", "DmadError": "dmad.compress.errors",
    "MaskSearch": "dmad.compress.mask_search",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dmad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
