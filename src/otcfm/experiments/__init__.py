"""Named recipes built on the library: each one configures runs, executes them and reports."""
