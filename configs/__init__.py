"""Method defaults (configs/<method>.yaml), fidelity presets and teacher recipes, shipped as package data."""
