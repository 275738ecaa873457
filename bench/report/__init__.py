"""The reporter: results -> tidy DataFrames -> tables (Markdown, LaTeX, CSV), figures (PNG, PDF) and one
self-contained HTML page per suite, built to make the retraining learning rate's trainability bias visible."""
from bench.report.build import write_reports, write_suite_report
from bench.report.load import COLUMNS, FilterError, Results, apply_filter, from_records, load_results
from bench.report.references import ReferenceError, load_reference

__all__ = ["COLUMNS", "FilterError", "ReferenceError", "Results", "apply_filter", "from_records", "load_reference",
           "load_results", "write_reports", "write_suite_report"]
