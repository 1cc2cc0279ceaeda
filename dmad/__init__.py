"""dmad: compress image-to-image GAN generators with DMAD and ship them to phones.

The installed namespace maps the repository's stage folders: ``dmad.compress`` (``compress/``,
the method), ``dmad.export`` (``export/``) and ``dmad.benchmark`` (``benchmark/``), each importing
only the layers below it. This package itself holds the application on top of all three: the
``dmad`` command line (:mod:`dmad.cli`) and the end-to-end pipeline (:mod:`dmad.pipeline`).
"""

__version__ = "0.1.0"
