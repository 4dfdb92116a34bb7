"""Device profiles (YAML), hardware detection, and the planner: provider per op, parallel layout, memory."""
