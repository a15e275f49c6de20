"""The dashboard's model (hub/static/dashboard-model.js) in headless Chromium, fed events by
hand: which keys an entity's page takes, what the cap drops and what it keeps."""

from __future__ import annotations

from typing import Any

from hub.config import Settings

from .browser_support import PROJECT, chromium, missing, open_page
from .support import require, run_hub

require(missing())  # skip without Chromium/Playwright; fail under CI

SCRIPT = """async () => {
  const m = await import('/static/dashboard-model.js');
  const out = {};
  const agent = m.keyMatcher(m.entityKeys('agent', 'r1'));
  out.agentKeys = ['agent.run/r1', 'agent.step/r1/3', 'agent.message/r1/answer',
                   'agent.run/r10', 'agent.step/r1.x/1', 'agent.run/r1.ask', null]
    .map((k) => agent(k));
  const workflow = m.keyMatcher(m.entityKeys('workflow', 'w1'));
  out.workflowKeys = ['workflow.run/w1', 'workflow.node/w1/ask-1', 'agent.run/w1.ask-1.1',
                      'ingest.job/w1.ingest.1', 'workflow.run/w10', 'agent.run/w10.ask-1.1']
    .map((k) => workflow(k));
  out.ids = ['r1', 'a.b:c-d_1', 'a*', 'a/b', '', 'x'.repeat(129)].map(m.isValidId);

  const run = (id, status, t) => ({ type: `agent.run.${status === 'running' ? 'updated' : status}`,
    key: `agent.run/${id}`, data: { run_id: id, status, input: 'q', timings: { created_ms: t } } });
  const step = (id) => ({ type: 'agent.step.updated', key: `agent.step/${id}/0`,
    data: { run_id: id, index: 0, name: 'plan', status: 'succeeded' } });
  const model = new m.Model({ keep: 3, pinned: ['agent/old-pinned'] });
  // Parts may come before their run within a snapshot: kept until the run comes.
  const events = [step('old-pinned'), run('old-pinned', 'completed', 1),
    run('old', 'completed', 2), run('stuck', 'running', 3), step('new'),
    run('new', 'completed', 5), run('newer', 'failed', 6)];
  for (const e of events) model.apply(e);
  out.notApplied = model.apply({ type: 'test.other', key: 'x/1', data: {} });
  model.trim();
  out.kept = [...model.runs.keys()].sort();
  out.steps = [...model.steps.keys()].sort();
  out.dropped = model.dropped;

  const only = new m.Model({ accepts: agent });
  out.otherRun = only.apply(run('r2', 'running', 1));
  out.ownRun = only.apply(run('r1', 'running', 1));
  return out;
}"""


async def test_the_model_takes_an_entitys_keys_and_drops_only_old_finished_ones() -> None:
    async with run_hub(Settings(heartbeat_s=5.0)) as running, chromium() as browser:
        async with open_page(browser, f"{running.url}/?project={PROJECT}") as page:
            out: dict[str, Any] = await page.evaluate(SCRIPT)
    assert out["agentKeys"] == [True, True, True, False, False, False, False]
    assert out["workflowKeys"] == [True, True, True, True, False, False]
    assert out["ids"] == [True, True, False, False, False, False]
    assert out["notApplied"] is False
    # keep=3 of 5 runs: the oldest finished go until 3 are left, but never the pinned one nor
    # the running one, however old; a dropped run's steps go with it.
    assert out["kept"] == ["newer", "old-pinned", "stuck"]
    assert out["dropped"] == 2
    assert out["steps"] == ["old-pinned"]
    assert (out["otherRun"], out["ownRun"]) == (False, True)
