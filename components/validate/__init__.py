"""Stage between prepare and convert: validates the image CSV (duplicates, leakage, near-duplicates, balance,
image statistics) and gates training on leakage and conflicting labels."""

from components.validate.core import GateFailed, Report, check_gate, summary_line, validate

__all__ = ["GateFailed", "Report", "check_gate", "summary_line", "validate"]
