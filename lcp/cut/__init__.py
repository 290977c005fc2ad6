"""The cut: score the units (``importance``), rank and walk to a budget (``ranking``), build and verify the
smaller network (``pruner``), measure speed (``latency``), diagnose a model (``diagnose``). No data, no training."""
