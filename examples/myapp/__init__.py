"""The worker example: tasks in `tasks`, run by ``looplane worker``, sent by `enqueue`."""
