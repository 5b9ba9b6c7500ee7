"""The paper's benchmark protocol: :mod:`.config` (settings), :mod:`.steps` (data, models, picks, scores), :mod:`.run` (the resumable run), :mod:`.report` (REPORT.md)."""
