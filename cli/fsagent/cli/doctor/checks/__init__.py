"""One module per concern; each `run(ctx)` returns its checks."""
