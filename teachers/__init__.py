"""The shipped teachers (weights files and manifest.json), shipped as package data."""
