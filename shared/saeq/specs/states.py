"""A job's states and the moves between them, as data: what the registry allows, in one table.

queued -> running -> succeeded | failed | cancelled. A running job whose worker was lost goes back
to queued (the reaper sends it again); a queued job can fail (a dependency failed, attempts ran
out, past its time limit) or be cancelled before it runs. An ended job never moves again.
"""

from __future__ import annotations

from typing import Literal, get_args

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""The `state` field of a job record."""

STATES: tuple[JobState, ...] = get_args(JobState)
"""Every state, in the order a job goes through them."""

TERMINAL: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
"""States a job never leaves: its record expires after the retention."""

OPEN: tuple[JobState, ...] = ("queued", "running")
"""States of a job that has not ended."""

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # claim (a worker takes it); cancel before it runs; a failed dependency, attempts exhausted
    # at claim, or past its time limit while requeued.
    "queued": frozenset({"running", "failed", "cancelled"}),
    # the worker finishes it (any end); the reaper requeues it (worker lost, attempts left),
    # fails it (worker lost on the last attempt, past its time limit) or cancels it (cancel
    # requested and its worker lost).
    "running": frozenset({"queued", "succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
"""Legal moves: TRANSITIONS[from] holds every state a job in `from` may go to next."""


def is_terminal(state: str) -> bool:
    return state in TERMINAL


def can_move(from_state: str, to_state: str) -> bool:
    """Whether the registry lets a job in `from_state` go to `to_state`."""
    return any(state == from_state and to_state in moves for state, moves in TRANSITIONS.items())
