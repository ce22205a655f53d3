"""Hostile option values for attacks and occlusion (issue 19): each is one line and exit != 0.

Appended to :data:`hostile_cases.CASES` (see the end of tests/hostile_cases.py), so
``tests/test_hostile_inputs.py`` checks each against the common contract and the docs table
generated from the same list shows it.
"""

from __future__ import annotations

from typing import List

from hostile_cases import Case, Invocation, _level, run_args


def _on(value: str, expect: List[str]):
    def build(ws) -> Invocation:
        return Invocation(run_args("--noise", "pgd", "--eps", "0.002", "--steps", "1", "--on", value), expect)

    return build


CASES: List[Case] = [
    Case("huge-eps-pgd", "options", "`--noise pgd --eps 1e308`", "refused: linf eps must be <= 2 (waveforms are in [-1, 1])",
         _level("pgd", "eps", "1e308", ["pgd eps", "above 2"])),
    Case("huge-eps-fgsm", "options", "`--noise fgsm --eps 1e308`", "refused: linf eps must be <= 2",
         _level("fgsm", "eps", "1e308", ["fgsm eps", "above 2"])),
    Case("huge-period", "options", "`--noise occlusion --pattern alternate --period 1e308`",
         "refused: durations must be <= 3600 s",
         _level("occlusion", "period", "1e308", ["period_s", "3600"], extra=("--pattern", "alternate"))),
    Case("huge-span", "options", "`--noise occlusion --pattern first --span 1e308`", "refused: durations must be <= 3600 s",
         _level("occlusion", "span", "1e308", ["span_s", "3600"], extra=("--pattern", "first"))),
    Case("on-chain-base", "options", "`--on chain:base=1`", "refused: the base of --on cannot be a chain",
         _on("chain:base=1", ["chain:base=1", "cannot itself be a chain"])),
    Case("on-duplicate-key", "options", "`--on 'gaussian:snr_db=20;snr_db=30'`", "refused: a field given twice",
         _on("gaussian:snr_db=20;snr_db=30", ["snr_db", "twice"])),
]
