"""One run of the fake VASP: start-up, the ionic loop, its electronic steps, faults; and transcript replay."""
