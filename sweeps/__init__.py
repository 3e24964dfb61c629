"""Control plane: the CLI, the config, the study storage and the coordinator."""

__version__ = "0.1.0"
