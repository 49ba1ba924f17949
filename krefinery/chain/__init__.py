"""The one durable generation loop: what a process shares (the experiment), the runner, and the store of trained generations."""
