"""The simulator: a deterministic, seeded discrete-event run of devices and a server under each strategy.

No real time, no sockets, no asyncio: simulated time comes from an event queue, randomness from
``random.Random(seed)``. See docs/simulator.md.
"""

from .oracle import FinalRecord, OracleReport, Write, evaluate
from .run import StrategyResult, run_plan
from .workload import Params, Plan, make_plan, workload_schema

__all__ = ["FinalRecord", "OracleReport", "Params", "Plan", "StrategyResult", "Write", "evaluate", "make_plan",
           "run_plan", "workload_schema"]
