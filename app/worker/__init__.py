"""The worker: the only place valuations run for the service.

- :mod:`app.worker.supervisor`: :class:`~app.worker.supervisor.Worker` (claims jobs into its slots, supervises one
  spawned child process per job, heartbeats, cancels, time-outs) and the embedded-mode hooks of ``appraise serve``;
- :mod:`app.worker.child`: what a child process does with one claimed job, and the :class:`~app.worker.child.
  Outcome` it reports;
- :mod:`app.worker.runner`: the adapter from a job row to a method of :mod:`app.methods` and back to stored rows.

Job state changes are :mod:`app.queue`'s.
"""
