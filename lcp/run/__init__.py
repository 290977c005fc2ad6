"""Runs: the options of every command (``config``), loading model and data (``load``), the one pipeline
(``pipeline``), the post-cut stage (``recover``), run folders (``folder``) and ``lcp train`` (``train_run``)."""
