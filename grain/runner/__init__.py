"""The runner: a warm child process of a worker that runs one job at a time."""
