"""The application layer: the CLI, the compile job (request -> pass flow -> artifact),
running and exporting artifacts, and inspecting models."""
