"""The dashboard after hours of demo, simulated by publishing what 45+ minutes of `hub demo`
leave behind (hundreds of finished jobs, workflow runs and agent runs) straight to the hub,
then more live: each section shows the newest few, finished cards folded, the rest on demand;
the page keeps at most KEEP entities per kind and MAX_LOG_ROWS log rows."""

from __future__ import annotations

from typing import Any

from hub.config import Settings

from .browser_support import PROJECT, chromium, missing, open_page
from .dashboard_support import dashboard_hub, visible_ids
from .support import require

require(missing())  # skip without Chromium/Playwright; fail under CI

KEEP = 200  # hub/static/dashboard-model.js
MAX_LOG_ROWS = 2000  # hub/static/dashboard-log.js
SHOWN = {"ingest": 10, "agent": 5, "workflow": 4}  # hub/static/dashboard.js
CARDS = "document.querySelectorAll('#agent-runs .agent').length"
T0 = 1_780_000_000_000  # ms: entity i was created at T0 + i s


def timings(i: int) -> dict[str, int]:
    return {"created_ms": T0 + i * 1000}


def job(i: int, status: str = "completed") -> list[dict[str, Any]]:
    job_id = f"job-{i:04d}"
    data = {"job_id": job_id, "source": "upload", "status": status, "total_files": 2}
    done = {"progress": 1.0, "files_done": 2, "documents": 2, "chunks": 5}
    kind = "completed" if status == "completed" else "updated"
    return [
        {
            "type": f"ingest.job.{kind}",
            "key": f"ingest.job/{job_id}",
            "data": {**data, **(done if status != "running" else {}), "timings": timings(i)},
        }
    ]


def agent_run(i: int, status: str = "completed") -> list[dict[str, Any]]:
    run_id = f"run-{i:04d}"
    step = {"run_id": run_id, "index": 0, "name": "plan", "status": "succeeded"}
    answer = {"run_id": run_id, "message_id": "answer", "index": 4, "done": True, "text": f"A{i}"}
    run = {"run_id": run_id, "agent": "researcher", "input": f"question {i}?", "status": status}
    kind = "completed" if status == "completed" else "updated"
    return [
        {"type": "agent.step.updated", "key": f"agent.step/{run_id}/0", "data": step},
        {"type": "agent.message.appended", "key": f"agent.message/{run_id}/answer", "data": answer},
        {
            "type": f"agent.run.{kind}",
            "key": f"agent.run/{run_id}",
            "data": {**run, "timings": timings(i)},
        },
    ]


def workflow_run(i: int) -> list[dict[str, Any]]:
    run_id = f"wf-{i:04d}"
    nodes = [
        {
            "type": "workflow.node_state.updated",
            "key": f"workflow.node/{run_id}/{node}",
            "data": {
                "run_id": run_id,
                "node_id": node,
                "kind": "delay",
                "state": "succeeded",
                "attempt": 1,
                "progress": 1.0,
                "depends_on": deps,
            },
        }
        for node, deps in (("a", []), ("b", ["a"]))
    ]
    run = {
        "run_id": run_id,
        "workflow": "synthetic",
        "state": "succeeded",
        "progress": 1.0,
        "nodes_total": 2,
        "nodes_succeeded": 2,
        "timings": timings(i),
    }
    return [*nodes, {"type": "workflow.run.updated", "key": f"workflow.run/{run_id}", "data": run}]


async def publish(http: Any, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 500):
        batch = events[start : start + 500]
        response = await http.post(f"/v1/projects/{PROJECT}/events", json=batch)
        assert response.status_code == 202, response.text


async def counts(page: Any) -> dict[str, int]:
    result: dict[str, int] = await page.evaluate(
        """() => { const m = window.hubDashboard.model; return {
          jobs: m.jobs.size, runs: m.runs.size, workflows: m.workflows.size,
          steps: m.steps.size, messages: m.messages.size, nodes: m.nodes.size,
          cards: document.querySelectorAll('#ingest *, #workflows *, #agents *').length,
          logRows: document.querySelectorAll('#log-rows tr').length,
          logSeen: window.hubDashboard.log.seen.size } }"""
    )
    return result


async def test_after_hours_of_demo_the_lists_stay_short_and_the_page_bounded() -> None:
    settings = Settings(heartbeat_s=5.0, publish_rate_per_token=0.0)
    async with dashboard_hub(settings) as demo, chromium() as browser, demo.running.http() as http:
        history: list[dict[str, Any]] = []
        for i in range(420):  # like 45+ minutes of demo: 1 job and 1 workflow per 2 agent runs
            history += agent_run(i)
            if i % 2 == 0:
                history += job(i) + workflow_run(i)
        history += job(1000, "running") + agent_run(1000, "running")  # the newest: still running
        await publish(http, history)

        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            await page.wait_for_selector('#agent-runs .agent[data-run="run-1000"]')
            assert await visible_ids(page, "#agent-runs .agent", "data-run") == [
                "run-1000", "run-0419", "run-0418", "run-0417", "run-0416"
            ]  # fmt: skip
            assert len(await visible_ids(page, "#jobs tr", "data-job")) == SHOWN["ingest"]
            assert len(await visible_ids(page, ".workflow", "data-run")) == SHOWN["workflow"]
            assert await page.text_content("#agents-count") == f"(5 of {KEEP})"
            # Running: open. Finished: one line, the body hidden.
            expanded = await visible_ids(page, "#agent-runs .agent", "data-expanded")
            assert expanded == ["true", "false", "false", "false", "false"]
            assert await page.is_hidden('.agent[data-run="run-0419"] .body')
            assert await page.is_visible('.agent[data-run="run-1000"] .steps')
            assert await page.is_visible('#jobs tr[data-job="job-1000"] button.cancel')
            assert await page.is_hidden('#jobs tr[data-job="job-0418"] button.cancel')

            before = await counts(page)
            assert before["jobs"] == KEEP and before["workflows"] == KEEP and before["runs"] == KEEP
            assert before["steps"] == before["messages"] == KEEP and before["nodes"] == KEEP
            assert before["cards"] < 800, before

            # More on demand, then back to the newest few.
            await page.click("#agent-more")
            await page.wait_for_function(f"{CARDS} === 10")
            assert await page.text_content("#agent-more") == f"Show 5 more ({KEEP - 10} older)"
            await page.click("#agent-fewer")
            await page.wait_for_function(f"{CARDS} === 5")
            assert await page.is_hidden("#agent-fewer")

            # An hour more, live: the newest show, the page keeps no more than before.
            live: list[dict[str, Any]] = []
            for i in range(2000, 2150):
                live += agent_run(i) + job(i)
            filler = [{"type": "test.filler.added", "data": {"i": i}} for i in range(1500)]
            await publish(http, live + filler)
            await page.wait_for_selector('#agent-runs .agent[data-run="run-2149"]')
            await page.wait_for_function(
                f"document.querySelectorAll('#log-rows tr[data-seq]').length === {MAX_LOG_ROWS}"
            )
            after = await counts(page)
            assert after["runs"] == KEEP and after["jobs"] == KEEP, after
            assert after["steps"] == after["messages"] == KEEP, after
            assert after["logRows"] == after["logSeen"] == MAX_LOG_ROWS, after
            assert after["cards"] <= before["cards"] + 50, (before, after)
            # Running ones first, however old (never dropped, never behind "show more").
            shown = await visible_ids(page, "#agent-runs .agent", "data-run")
            assert shown == ["run-1000", "run-2149", "run-2148", "run-2147", "run-2146"]
            jobs = await visible_ids(page, "#jobs tr", "data-job")
            assert jobs[:3] == ["job-1000", "job-2149", "job-2148"]
