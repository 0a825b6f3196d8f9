"""Stand-ins for testing Grain without processes, sockets or wall-clock time.

The executor, the client session and the worker agent are transport-agnostic; this
package supplies what they are wired to in the deterministic simulation tier
(``tests/sim``) and in benchmarks that want the control plane alone:

- ``jobs``: jobs as data (``JobSpec``: how long, what it returns or raises, whether it
  crashes its runner, prints or never ends) and the function ``sim_job`` that names them;
- ``fake_runners``: ``FakeRunnerPool``/``FakeRunnerProcess``, the interface of
  ``grain.worker.runners`` over trio tasks in (mock) time, and ``RunLog``, the ground truth
  of which job ran where and when;
- ``sim_links``: message links with latency, cuts and partitions;
- ``world``: an executor, workers and clients wired together, with the faults to inject.

Nothing in Grain's production code imports this package.
"""
