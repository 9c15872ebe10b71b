"""Process-level utilities that know nothing of data, models or training: user errors,
workdir paths, CPU devices, the device mesh, bounded dispatch, preemption, process set-up."""
