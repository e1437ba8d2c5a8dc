"""The ground-truth drag benchmark: seeded synthetic scenes with exact expected results."""
