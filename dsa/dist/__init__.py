"""Several processes: launching local ranks, process groups from the plan, DP-attention lockstep."""
