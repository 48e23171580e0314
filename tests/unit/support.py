"""Values shared by the unit test files (they import from here, never from one another)."""

# Keep the generator cheap in unit tests; its quality is tested in tests/integration.
SMALL = {"generative_replay": {"generator_iterations": 20, "hidden": 32}}
