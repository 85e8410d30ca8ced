"""Generated code; regenerate with `make proto`."""
