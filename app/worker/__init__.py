"""The worker: the only place valuations run for the service.

- :mod:`app.worker.queue`: claim, lease renewal, reaper, state transitions and events (what the jobs API calls:
  :func:`~app.worker.queue.request_cancel`).
- :mod:`app.worker.loop`: :class:`~app.worker.loop.Worker` (supervises one spawned child process per job) and the
  embedded-mode hooks for ``appraise serve``.
- :mod:`app.worker.params`: the params model of each method (validated at submission and by the worker).
- :mod:`app.worker.runners`: one runner per method (library call, summary and point values).
"""
