"""What the exit code of ``iterrefine run`` says (documented in README.md, "Exit codes").

    0    every item reached a terminal topic and none was dead-lettered for a
         processing reason (invalid input records in the DLQ do not count)
    1    the run finished, but items were dead-lettered for processing reasons
         (unreadable answers, exhausted retries, ...); also when no item at all was
         curated or rejected, so an all-DLQ run never exits 0
    2    nothing useful could start, or the run was stopped by a problem only the
         operator can fix: bad flags or config, output not writable, an LLM endpoint
         down or rejecting the key at preflight, or the key rejected mid-run
    3    cut short: SIGTERM/Ctrl-C or --timeout-s came first, some items did not finish
    4    stopped by the cost cap (--max-cost / max_cost): the LLM spend reached it, new
         work stopped, in-flight work finished; the items not done are not in the output
    5    the input held no records (an empty file, blank lines only, a trial of 0):
         nothing was started or written
    6    every item ended the same way: all rejected, or all dead-lettered for processing
         reasons (at least two items); a judge that rejects everything or answers that
         never read are a setup problem, not a result. ``--allow-uniform-outcome`` turns
         this off (then all rejected is 0, all dead-lettered 1)
    130  a second Ctrl-C: exited at once, without draining

``iterrefine export`` has codes of its own (README "Exit codes of iterrefine export"):

    0    every item ingested into items.raw is in a terminal topic, and in the files
    2    bad flags or config, output not writable, no broker
    3    incomplete: some ingested items have not reached a terminal topic yet; the files
         hold those that have, and the message says how many are missing and where
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OK = 0
DEAD_LETTERED = 1
USAGE = 2
CUT_SHORT = 3
COST_CAP = 4
EMPTY_INPUT = 5
UNIFORM_OUTCOME = 6
FORCED = 130
#: ``iterrefine export``: the files are written, but ingested items are still missing.
EXPORT_INCOMPLETE = 3


def processing_dead_letters(summary: Mapping[str, Any], *, invalid_input: int) -> int:
    """DLQ rows that are not invalid input records (each of those has one DLQ row)."""
    return max(0, int(summary["dlq"]) - invalid_input)


def uniform_outcome(summary: Mapping[str, Any], *, invalid_input: int) -> str | None:
    """``rejected`` or ``dlq`` when every item (two or more) ended that way, else None."""
    items = int(summary["items_in"]) - invalid_input
    if items < 2 or not summary["complete"]:
        return None
    if summary["rejected"] == items and summary["curated"] == 0:
        return "rejected"
    if processing_dead_letters(summary, invalid_input=invalid_input) == items:
        return "dlq"
    return None


def run_exit_code(summary: Mapping[str, Any], *, invalid_input: int,
                  allow_uniform: bool = False) -> int:
    if summary.get("aborted"):
        return USAGE
    if summary.get("stopped_by_cost_cap"):
        return COST_CAP
    if not summary["complete"]:
        return CUT_SHORT
    if not allow_uniform and uniform_outcome(summary, invalid_input=invalid_input):
        return UNIFORM_OUTCOME
    nothing_out = summary["curated"] + summary["rejected"] == 0 and summary["items_in"] > 0
    if processing_dead_letters(summary, invalid_input=invalid_input) or nothing_out:
        return DEAD_LETTERED
    return OK
