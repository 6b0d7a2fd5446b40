"""Policy models, YAML loading with file:line errors, and the JSON Schema."""
