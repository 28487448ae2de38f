"""kill -9 of a real agentd at 20 random moments of a container churn, restarted each time on
the same state directory: closed ledger periods still balance the parent's kernel counter and
nothing is counted twice.

A kill loses the final reads of the lives that end while no agentd runs; their CPU is then in
the parent's `unattributed` rows, never billed twice: billed + unattributed == the parent's
kernel delta exactly, the parent's own rows sum to that delta, and no life is billed more than
the kernel counted for it.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import needs_root
from tests.support.agentd import RunningAgent
from tests.support.cgroups import CgroupFactory
from tests.support.churn import Churn, Life
from tests.support.churn_checks import settle_and_judge, usage_usec

pytestmark = needs_root

RATE = 25
SECONDS = 60
KILLS = 20
#: No PSI triggers: a killed agentd's exit closes each one after an RCU grace period, which
#: takes tens of seconds with thousands of other tests' cgroups on a shared host; this test is
#: about the ledger.
CONFIG: dict[str, Any] = {"interval": 1, "ledger": {"period_seconds": 5, "grace_seconds": 1},
                          "events": {"pressure_resources": []}}


def test_kill9_during_churn_keeps_the_ledger_balanced(cgroups: CgroupFactory) -> None:
    parent = cgroups.bases[cgroups.ref_key] / cgroups.prefix_name
    rng = random.Random()
    # One random moment in each twentieth of the churn (a kill may land mid-start-up too).
    slot = SECONDS / KILLS
    moments = [i * slot + rng.uniform(0.1, slot - 0.1) for i in range(KILLS)]
    with tempfile.TemporaryDirectory(prefix="ca-kill9-") as tmp:
        wd = Path(tmp)
        agent = RunningAgent(wd, CONFIG, [])
        try:
            agent.wait_ready(60)
            # The churn ends just before a period boundary: the parent's CPU after its last
            # read is then billed by the next cycle in the next period, which the settle must
            # wait for (it once judged without it: short by 7-94 ms in 2 of 3 CI runs).
            period = CONFIG["ledger"]["period_seconds"]
            end_at = (int(time.time() + SECONDS) // period + 1) * period - 0.2
            time.sleep(max(0.0, end_at - SECONDS - time.time()))
            usage0 = usage_usec(parent)
            lives: list[Life] = []
            churn = Churn(cgroups, RATE, 0.01, workers=8)
            runner = threading.Thread(target=lambda: lives.extend(churn.run(SECONDS)))
            runner.start()
            kills = 0
            t0 = time.monotonic()
            for at in moments:
                time.sleep(max(0.0, at - (time.monotonic() - t0)))
                if not runner.is_alive():
                    break
                agent.proc.kill()  # SIGKILL
                agent.proc.wait(timeout=120)
                agent.stop()
                kills += 1
                agent = RunningAgent(wd, CONFIG, [])
            runner.join()
            agent.wait_ready(60)
            last_id = max((e["id"] for e in agent.get("/api/v1/events?limit=1")["events"]),
                          default=0)
            v = settle_and_judge(agent, lives, cgroups.prefix_rel, usage_usec(parent) - usage0,
                                 finals_since=last_id)
        finally:
            agent.stop()
    print(f"{kills} kills; {v.summary()}")
    print("\n".join(v.misses[:5]))
    assert kills == KILLS and len(lives) == RATE * SECONDS
    assert v.parent_self == v.parent_delta > 0, v.summary()
    assert v.billed + v.unattributed == v.parent_delta, v.summary()
    assert v.duplicate_rows == 0 and v.over_billed == 0, v.summary()
    # Most lives end while an agentd runs: billed exactly from their final read.
    assert v.billed_exact > 0, v.summary()
