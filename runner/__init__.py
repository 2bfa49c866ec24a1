"""The run harness: everything between the command line and the agents.

- ``recorder``: the budget's recorder (every evaluation appended to ``evaluations.jsonl`` as it happens);
- ``registry``: the ``--agent`` names (generic agents and the published methods) and users' own agents;
- ``rundir``: one run directory (config layering, lock, checkpoint, resume, final student, summary);
- ``header``: what a run prints before its agent starts (its teacher's accuracy, its expected duration);
- ``compare``: several agents x seeds on one env (leaderboard, plots);
- ``validate``: replaying recorded students; ``report``: a run's table and plots; ``plots``: a comparison's
  plots; ``catalog``: what ``--list`` prints (plain data, checked against the real classes by a test).

``run_agent.py`` is the command line; it parses flags and calls into this package.
"""
