"""Whole-lab replays: a trace of jobs (a lab's history or a generated week) run against a fleet and
a cloud market under several strategies, through the controller's own `schedule.plan` and
`burst.decide`. See `engine.run` and docs/cloud.md ("Simulating a burst policy")."""
