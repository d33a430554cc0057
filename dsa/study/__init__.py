"""What the notebooks read and show, in the order the data flows: records -> runs and tables -> statistics
-> verdicts -> figures -> the report; plus the notebook helpers (parameters, scope boxes, analysis, probes)."""
