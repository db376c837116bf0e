"""Compare strategies on one recipe, each run in its own child process.

The output is JSON, a Markdown table and plots (Pareto front, loss curves)."""
