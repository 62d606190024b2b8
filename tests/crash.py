"""A simulated crash for in-process runs: `Hooks(after_step=crash_after(n))` raises `Crash`
right after step n, so the failure is placed exactly and no kill timing is involved."""


class Crash(RuntimeError):
  pass


def crash_after(step: int):
  """An after_step hook that raises Crash after `step`."""
  def after_step(s):
    if s == step:
      raise Crash(f"simulated crash after step {s}")
  return after_step
