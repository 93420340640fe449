"""Layer 8, presentation: the summary tables every command prints and the HTML report of a
run (analysis, figures, page). Stages call these; nothing here trains or loads models."""
