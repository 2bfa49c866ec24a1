"""The run harness: everything between the command line and the agents.

- ``recorder``: the budget's recorder (every evaluation appended to ``evaluations.jsonl`` as it happens);
- ``registry``: the ``--agent`` names (generic agents and the published methods) and users' own agents;
- ``rundir``: one run directory (config layering, lock, checkpoint, resume, final student, summary);
- ``compare``: several agents x seeds on one env (leaderboard, plots);
- ``validate``: replaying recorded students; ``report``: a run's table and plots.

``run_agent.py`` is the command line; it parses flags and calls into this package.
"""
