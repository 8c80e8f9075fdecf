"""Training shared by the two training stages: the Lightning modules, the Trainer, resume,
and the project files that make a run folder loadable like an official one."""
