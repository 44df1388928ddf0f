"""PatchLens user interfaces: the command line and the Gradio app (no tensor math here)."""
