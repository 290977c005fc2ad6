"""Training: image data and its disk cache (``data``, ``images``), evaluation and BatchNorm recalibration
(``evaluate``), fine-tuning, distillation and baselines (``train``, ``checkpoint``), recovery options."""
