"""`appraise worker`: run jobs from the service's queue on this machine (CPU or one GPU)."""

from __future__ import annotations

import logging
import signal

import typer

from app.commands.common import UsageProblem, parse_device, stderr


def worker(
    device: str | None = typer.Option(None, "--device", help="cpu or cuda:N [default: APPRAISE_WORKER_DEVICE]"),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1,
                                           help="Jobs run at once [default: APPRAISE_WORKER_CONCURRENCY]"),
    grace: float = typer.Option(30.0, "--grace", min=0,
                                help="On SIGINT/SIGTERM, seconds running jobs may finish before they are requeued"),
) -> None:
    """Claim and run valuation jobs until SIGINT/SIGTERM (then: stop claiming, let running jobs finish for
    --grace seconds, requeue the rest; a second signal requeues at once)."""
    from app.config import get_settings
    from app.db.migrate import SchemaNotCurrent, check_current
    from app.db.session import make_engine
    from app.worker.supervisor import Worker, WorkerConfig

    settings = get_settings()
    dev = str(parse_device(device or settings.worker_device))
    engine = make_engine(settings.database_url)
    try:
        check_current(engine)
    except SchemaNotCurrent as exc:
        raise UsageProblem(str(exc)) from exc
    finally:
        engine.dispose()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    w = Worker(WorkerConfig.from_settings(settings, device=dev, concurrency=concurrency))
    signals = {"count": 0}

    def on_signal(signum, _frame) -> None:
        signals["count"] += 1
        first = signals["count"] == 1
        logging.getLogger("app.worker").info("worker_id=%s state=stopping signal=%s grace=%s", w.worker_id,
                                             signal.Signals(signum).name, grace if first else 0)
        w.stop(grace if first else 0.0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stderr.print(f"worker {w.worker_id} on {dev}, {w.config.concurrency} at once; Ctrl-C to stop")
    w.run()
