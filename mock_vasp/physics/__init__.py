"""Where the numbers come from: physics backends, the SCF model, electronic memory, force field, relaxation."""
