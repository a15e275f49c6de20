"""`hub demo`: the hub with the services on the embedded backend, and work to watch.

Starts the hub (memory backend unless --backend says otherwise) with the ingest, agent and
workflow services mounted, ingests the sample documents shipped in `services/sample_docs`,
then runs a workflow (ingest -> two agent questions) a few seconds later and again
`--interval` seconds after each one ends (one at a time), and prints where to watch.
Stop it with Ctrl-C (or SIGTERM: it drains and exits 0).
The services' limits come from SERVICES_<FIELD> variables (services/README.md, "Limits").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from services.events import register_events
from services.limits import ServiceLimits
from services.model_settings import add_model_arguments, model_from_args
from services.runtime import SAMPLE_DOCS, Services
from services.store import Store
from services.workflow import NodeSpec, WorkflowSpec

if TYPE_CHECKING:
    from hub.core import Hub

__all__ = ["QUESTIONS", "demo_workflow", "main", "register", "run_demo"]

log = logging.getLogger("services.demo")

QUESTIONS = (
    ("How do we treat varroa mites?", "When does swarm season start and how do we prevent swarms?"),
    ("How much honey does a colony need for winter?", "What should a hive inspection check?"),
    ("What do I do if I get stung?", "Which hive gave the best honey yield?"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Entry point of the `hub.commands` group: adds `hub demo`."""
    from hub.cli import add_settings_arguments

    parser = subparsers.add_parser(
        "demo",
        help="run the hub with the demo services and live work to watch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser)
    parser.add_argument("--project", default="demo", help="project the demo publishes to")
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="seconds from the end of one workflow run to the start of the next (default 10)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=SAMPLE_DOCS,
        help="folder of documents to ingest (default: the shipped samples)",
    )
    parser.add_argument(
        "--db", default=":memory:", help="SQLite file for the corpus (default: in memory)"
    )
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.04,
        help="seconds between streamed answer deltas (default 0.04)",
    )
    add_model_arguments(parser)  # --model, --model-url (services/model_settings.py)
    parser.set_defaults(func=run_demo)


def demo_workflow(folder: Path, questions: tuple[str, str], run: int) -> WorkflowSpec:
    ingest = NodeSpec(
        id="ingest", kind="ingest", params={"folder": str(folder)}, retries=1, timeout=60.0
    )
    asks = [
        NodeSpec(
            id=f"ask-{i}",
            kind="agent",
            params={"question": q},
            depends_on=["ingest"],
            retries=1,
            timeout=60.0,
        )
        for i, q in enumerate(questions, start=1)
    ]
    return WorkflowSpec(name=f"ingest-and-ask-{run}", nodes=[ingest, *asks], max_concurrency=2)


def first_run_delay(interval: float) -> float:
    """Seconds from the start to the first workflow: soon, so a new user sees one at once."""
    return min(interval, 3.0)


def shown_docs(docs: Path) -> str:
    """The docs folder for the banner: as typed, or the shipped samples by their repo path."""
    return "services/sample_docs (the shipped samples)" if docs == SAMPLE_DOCS else str(docs)


async def _schedule(services: Services, project: str, folder: Path, interval: float) -> None:
    """Ingest once now; start a workflow `first_run_delay(interval)` later, then `interval`
    after each one ends (never two at a time)."""
    job = services.ingest.start_folder(project, folder)
    shown = "services/sample_docs" if folder == SAMPLE_DOCS else folder
    log.info("ingesting %s as job %s", shown, job.job_id)
    for run, questions in enumerate(itertools.cycle(QUESTIONS), start=1):
        await asyncio.sleep(interval if run > 1 else first_run_delay(interval))
        spec = demo_workflow(folder, questions, run)
        state = services.workflows.start(project, spec)
        log.info("workflow %s started (%s)", state.run_id, spec.name)
        task = services.workflows.runs.task(state.run_id)
        if task is not None:
            await asyncio.wait([task])


async def run_demo(args: argparse.Namespace) -> None:
    from hub.app import create_app
    from hub.cli import settings_from_args
    from hub.transports.gc_tuning import tune_gc
    from hub.transports.server import HubServer, listen_socket, uvicorn_config
    from hub.wire.catalog import EventCatalog

    settings = settings_from_args(args)
    # Bind first: a taken port must fail (CannotBind) before any service or ingest starts.
    sock = listen_socket(args.host, args.port)
    folder = args.docs.resolve()
    catalog = EventCatalog(strict=settings.strict_types)
    register_events(catalog)
    services = Services(
        Store(args.db),
        model=model_from_args(args, token_delay=args.token_delay),
        min_interval=0.2,
        allowed_roots=[folder],
        limits=ServiceLimits.from_env(),  # SERVICES_<FIELD> variables (services/README.md)
    )

    @contextlib.asynccontextmanager
    async def scheduler(hub: Hub) -> AsyncIterator[None]:
        task = asyncio.create_task(_schedule(services, args.project, folder, args.interval))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # Hooks exit in reverse: the scheduler stops first, then the services cancel their work.
    app = create_app(
        settings,
        catalog=catalog,
        routes=services.routes(),
        lifespan_hooks=[services.lifespan, scheduler],
    )
    server = HubServer(uvicorn_config(app, args.host, args.port, settings))
    serving = asyncio.create_task(server.serve([sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if not server.started:
        await serving
        sys.exit(1)
    tune_gc(settings.gc_gen0_threshold)
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{host}:{server.port}"
    print(
        f"""hub demo running on {base} (project {args.project!r}); Ctrl-C stops it.
  ingesting {shown_docs(args.docs)}, then a workflow (ingest -> 2 agent questions)
  {first_run_delay(args.interval):g}s after start and {args.interval:g}s after each one ends
watch it:
  hub tail --url {base} --project {args.project}
  hub tail --url {base} --project {args.project} --types 'agent.message.*' --since 0
  dashboard: {base}/
  state:     curl {base}/v1/projects/{args.project}/snapshot
ask your own question:
  curl -X POST {base}/v1/projects/{args.project}/agent/runs \\
       -d '{{"question": "How do swarms start?"}}'
""",
        flush=True,
    )
    await serving


def main(argv: list[str] | None = None) -> None:
    """`python -m services.demo`: the same command without the `hub` entry point."""
    parser = argparse.ArgumentParser(prog="python -m services.demo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from hub.cli_exit import CliError
    from hub.event_loop import loop_factory
    from hub.transports.server import CannotBind

    try:
        factory = loop_factory(args.loop)  # HUB_LOOP may name no loop
    except ValueError as exc:
        print(f"python -m services.demo: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run_demo(args))
    except KeyboardInterrupt:
        sys.exit(130)
    except CannotBind as exc:  # one line, the status `hub demo` exits with (3)
        print(f"python -m services.demo: {exc.strerror}", file=sys.stderr)
        sys.exit(3)
    except CliError as exc:  # a bad setting (HUB_MODEL_*, ...): one line, as `hub demo`
        print(f"python -m services.demo: {exc.message}", file=sys.stderr)
        sys.exit(int(exc.status))


if __name__ == "__main__":
    main()
