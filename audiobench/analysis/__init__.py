"""Analyses of models beyond the robustness grid (weight-space sharpness, :mod:`.sharpness`).

They read models and data batches and return tidy pandas tables; the commands write them into run
folders and the report shows them next to the robustness results.
"""
