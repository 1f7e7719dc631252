"""taskvisor benchmarks: µs per task beside baselines measured in the same run."""
