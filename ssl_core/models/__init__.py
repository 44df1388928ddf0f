"""Model table, bundled architectures and weight loading."""
