"""Tables, figures and findings: the ablations (Table 2), reports, plots."""
