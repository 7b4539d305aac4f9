"""Stage 2: analysts turn trajectories into patch proposals, each a branch (DESIGN section 1).

- `success`: one schema-constrained call per successful trajectory (lean path, lessons, patch).
- `error`: an agent loop per failed trajectory that must fix the output, checked, before it
  may write lessons; otherwise the trajectory is dropped (the quality gate).
- `goldguard` / `vetting`: code checks every patch passes (well formed, has a lesson, quotes
  no gold value of its task).
- `run`: `run_analysis` over a run directory, in the pool, resumable.
"""

from t2s.analysts.error import analyze_failure
from t2s.analysts.records import AnalysisJob, AnalysisRecord
from t2s.analysts.run import ANALYSTS, AnalysisSummary, run_analysis
from t2s.analysts.success import analyze_success

__all__ = [
    "ANALYSTS",
    "AnalysisJob",
    "AnalysisRecord",
    "AnalysisSummary",
    "analyze_failure",
    "analyze_success",
    "run_analysis",
]
