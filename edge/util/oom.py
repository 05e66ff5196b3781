"""Make a helper process the OOM killer's first choice instead of the recorder.

The recorder's unit sets ``OOMScoreAdjust=-100`` so that under memory pressure the kernel
kills something less important than the recorder. Children inherit that score, so the
process that loads and self-tests a candidate model (the riskiest thing the recorder ever
runs: an untrusted-until-verified model may try to allocate gigabytes) would be protected
too. It calls :func:`volunteer_for_oom_killer` first thing: raising one's own score needs no
privilege, and then a runaway verification is what the kernel kills, not the daemon.
"""

from __future__ import annotations

from pathlib import Path

OOM_SCORE_ADJ = Path("/proc/self/oom_score_adj")


def volunteer_for_oom_killer(score: int = 1000) -> bool:
    """Set this process's ``oom_score_adj`` (1000 = killed first); False where not supported."""
    try:
        OOM_SCORE_ADJ.write_text(f"{int(score)}\n")
    except OSError:
        return False
    return True
