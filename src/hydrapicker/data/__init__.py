"""Labelled data for training: project files (:mod:`.project`) and streamed crop batches (:mod:`.batches`)."""
