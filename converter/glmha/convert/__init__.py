"""CSA -> GLMHA conversion: spectrum analysis, planning, initialisation, module replacement, export."""
