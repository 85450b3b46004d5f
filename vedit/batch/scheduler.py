"""The batch's schedule: which :class:`~vedit.batch.workers.Unit` is ready (each group's inversion before its
edits, edits of one model together), what an outcome settles in the plan, and retries. Only a unit whose
worker process died is given back, up to ``retries`` times; a unit's own failure is its outcome, reported
once and never retried. :class:`BatchEvents` is what a run tells as it goes."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

from .plan import InversionGroup, Plan, PlannedEdit, model_key
from .workers import Outcome, Unit

DEFAULT_RETRIES = 2


class Schedule:
    """Which unit is ready: inversions first, a group's edits once its inversion is done."""

    def __init__(self, plan: Plan, retries: int, scratch: str | None = None):
        self.plan, self.retries = plan, retries
        self.ready: deque[Unit] = deque()
        self.waiting: dict[int, list[Unit]] = {}
        self.running: dict[str, Unit] = {}
        self.groups = {g.number: g for g in plan.groups}
        self.edits = {e.index: e for e in plan.edits}
        self.model_loads = 0

        def unit_for(edit: PlannedEdit) -> Unit:
            return Unit("edit", edit.index, edit.input, edit.config, edit.output, edit.digest, edit.settings,
                        scratch=scratch)  # fmt: skip

        # Edits of one model together (one load per worker), each group's inversion before its edits.
        by_model: dict[tuple, list[Unit]] = {}
        placed: set[int] = set()
        for edit in plan.edits:
            if edit.status != "todo" or edit.index in placed:
                continue
            group = self.groups.get(edit.group) if edit.group is not None else None
            bucket = by_model.setdefault(model_key(edit.config), [])
            if group is not None and group.own_unit:
                bucket.append(
                    Unit("invert", group.number, group.input, group.config.replace(prompt=None), scratch=scratch)
                )
                self.waiting[group.number] = [unit_for(e) for e in group.todo]
                placed.update(e.index for e in group.todo)
            else:
                if group is not None:
                    group.status = "in edit"
                bucket.append(unit_for(edit))
                placed.add(edit.index)
        for units in by_model.values():
            self.ready.extend(units)

    def pending(self) -> bool:
        return bool(self.ready or self.running or self.waiting)

    def take(self, prefer: tuple | None = None) -> Unit | None:
        """The next ready unit, one of model ``prefer`` when there is one (no reload)."""
        if not self.ready:
            return None
        chosen = next((u for u in self.ready if u.model_key == prefer), None) if prefer is not None else None
        if chosen is None:
            chosen = self.ready[0]
        self.ready.remove(chosen)
        chosen.attempts += 1
        self.running[chosen.uid] = chosen
        return chosen

    def finish(self, unit: Unit, outcome: Outcome) -> list[PlannedEdit | InversionGroup]:
        """Record an outcome; returns what it settled (for the display)."""
        self.running.pop(unit.uid, None)
        if outcome.status == "died":
            if unit.attempts <= self.retries:
                self.ready.appendleft(unit)
                return []
            outcome = dataclasses.replace(
                outcome, status="failed", reason=f"{outcome.reason}; gave up after {unit.attempts} attempts"
            )
        if outcome.model_loaded:
            self.model_loads += 1
        result = {
            "seconds": round(outcome.seconds, 3), "frames": outcome.frames, "inversion": outcome.inversion,
            "forwards": outcome.forwards, "warnings": outcome.warnings, "worker": outcome.worker,
            "attempts": unit.attempts,
        }  # fmt: skip
        if unit.kind == "invert":
            group = self.groups[unit.number]
            group.result = result
            waiting = self.waiting.pop(unit.number, [])
            settled: list[PlannedEdit | InversionGroup] = [group]
            if outcome.status == "done":
                group.status = outcome.inversion  # "computed" or "cached"
                group.result["shared_as"] = "cache" if (outcome.trajectory or {}).get("cached") else "file"
                for edit_unit in waiting:
                    edit_unit.trajectory = outcome.trajectory
                self.ready.extendleft(reversed(waiting))
            else:
                group.status, group.reason = "failed", outcome.reason
                for edit_unit in waiting:
                    edit = self.edits[edit_unit.number]
                    edit.status, edit.reason = "failed", f"its inversion failed: {outcome.reason}"
                    settled.append(edit)
            return settled
        edit = self.edits[unit.number]
        edit.result = result
        edit.status = "done" if outcome.status == "done" else "failed"
        edit.reason = outcome.reason
        return [edit]

    def abandon(self) -> None:
        """Interrupted: what did not finish is "not run"."""
        for edit in self.plan.edits:
            if edit.status == "todo":
                edit.status, edit.reason = "not run", "interrupted"
        for group in self.plan.groups:
            if group.status == "todo":
                group.status, group.reason = "not run", "interrupted"
        self.ready.clear()
        self.waiting.clear()
        self.running.clear()


class BatchEvents:
    """What :func:`run_batch` tells as it goes; the CLI shows it. Every method may be left as is."""

    def started(self, unit: Unit, worker: str) -> None:
        pass

    def finished(self, unit: Unit, outcome: Outcome, settled: list[Any]) -> None:
        pass

    def reporter(self, unit: Unit) -> Any:
        """A reporter for a unit run in this process (stage progress), or None."""
        return None

    def message(self, text: str) -> None:
        pass
