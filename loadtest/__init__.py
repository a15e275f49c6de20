"""Load generator for the hub: `python -m loadtest --help` (or the `hub-loadtest` script).

Modules: cli (entry point), scenarios (parameters), runner (one run), pool and worker
(subscriber processes), subscriber, wsclient and tracker (one connection, its frames and its
seq accounting), publisher, servers and baseline (what is loaded), results, report, plots.
"""

__all__: list[str] = []
