"""Compare strategies on one recipe: each run in its own child process, then JSON, a Markdown
table and plots (Pareto front, loss curves)."""
