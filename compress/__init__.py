"""dmad.compress: generators, data, teacher training and the DMAD search/distillation method."""
