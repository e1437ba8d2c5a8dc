"""Synthetic shape scenes: training data for the fixture model and ground truth for the
drag benchmark. Scenes are data (shapes with poses), so an edit's exact result is the
same scene with one shape's pose changed, rendered again."""
