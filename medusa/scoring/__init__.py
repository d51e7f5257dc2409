"""How everything is scored: balanced macro-F1 and its intervals, calibration against the annotators."""
