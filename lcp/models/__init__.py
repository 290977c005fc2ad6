"""Models: the CIFAR zoo (``zoo``), creation by name (``factory``), saving and rebuilding pruned models
(``store``), and timm integration (``timm_support``, ``timm_hub``)."""
