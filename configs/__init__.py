"""Package data: the demo config that ``dmad demo`` runs by default, and example configs."""
