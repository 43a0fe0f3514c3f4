"""`audit`: what is wrong in a catalogue before training on it, a file of decisions, and the cleaned folder.

find.py judges the listings, report.py writes the findings, fixes.py reads, checks and applies decisions.
"""

from dataclasses import asdict
from pathlib import Path

from .find import Audit, AuditConfig, audit
from .fixes import apply_fixes, decide, fixes_table, read_fixes
from .report import write_audit


def run_audit(cfg: AuditConfig, progress: bool = True) -> tuple[Audit, dict[str, Path]]:
    """Audit `cfg.data` and write the findings into `cfg.out`."""
    result = audit(cfg, progress)
    return result, write_audit(result, cfg.out, cfg.data, {k: str(v) for k, v in asdict(cfg).items()})


__all__ = ["Audit", "AuditConfig", "apply_fixes", "audit", "decide", "fixes_table", "read_fixes", "run_audit", "write_audit"]
