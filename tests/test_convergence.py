"""Issue 3's convergence property, on the testing kit: 2-5 replicas, create/update/delete/restore/resolve,
exchanges dropped, duplicated and reordered; once everything is exchanged, all replicas agree and no write
is lost (the oracle tracks what each writer had seen from the exchanges the machine made)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.demo import DEMO_SCHEMA
from crdtsync.testing import Cluster, edit_histories, replica_machine, schemas

LONG = os.environ.get("CRDTSYNC_LONG") == "1"

_machine_settings = settings(derandomize=True, max_examples=400 if LONG else 40,
                             stateful_step_count=60 if LONG else 30, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

DemoMachine = replica_machine(DEMO_SCHEMA)
DemoMachine.TestCase.settings = _machine_settings
TestDemoSchema = DemoMachine.TestCase

DrawnMachine = replica_machine(None)
DrawnMachine.TestCase.settings = _machine_settings
TestDrawnSchemas = DrawnMachine.TestCase


@settings(derandomize=True, max_examples=200 if LONG else 25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_edit_histories_converge(data: st.DataObject) -> None:
    schema = data.draw(schemas())
    n = data.draw(st.integers(2, 4))
    Cluster(schema, n).run(data.draw(edit_histories(schema, replicas=n)))
