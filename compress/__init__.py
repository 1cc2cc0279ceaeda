"""dmad.compress: generators, data, teacher training and the DMAD search/distillation method."""

__version__ = "0.1.0"
