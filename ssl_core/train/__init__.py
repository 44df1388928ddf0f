"""Training PatchLens's bundled encoders on the parts world."""
