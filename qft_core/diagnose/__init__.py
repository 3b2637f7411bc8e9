"""After the run is evaluated: the findings read off its metrics, their report and curves, and the advice for the
next run (which also reads the evaluation report)."""
